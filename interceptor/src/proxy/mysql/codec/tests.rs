use super::*;

/// MariaDB 10.11's initial handshake, as captured (header included).
const MARIADB_GREETING: &str = "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100040000006460337e426d7c4b00feff080200ff81150000000000001d0000003f3a42217a656a643725514a006d7973716c5f6e61746976655f70617373776f726400";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn masks(policy: &str) -> ActiveMasks {
    let p = policy::Policy::parse(policy, "test.toml").unwrap();
    let w = policy::Workload {
        cgroup: "/t".into(),
        unit: None,
        exe: None,
        comm: None,
        uid: None,
        pid: None,
        identity: None,
    };
    let t = policy::Target {
        protocol: policy::Protocol::Mysql,
        addr: "127.0.0.1".parse().unwrap(),
        port: 3306,
        host: None,
        database: None,
        user: None,
    };
    p.masker().for_context(&w, &t)
}

fn card_masks() -> ActiveMasks {
    masks("[[mask]]\ndetectors = [\"credit_card\"]\ncolumns = [\"password*\"]\n")
}

fn column(name: &str, ty: u8, charset: u16) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "shop", "t", "t", name, name] {
        put_lenenc_bytes(&mut p, s.as_bytes());
    }
    p.push(0x0c);
    p.extend_from_slice(&charset.to_le_bytes());
    p.extend_from_slice(&255u32.to_le_bytes());
    p.push(ty);
    p.extend_from_slice(&0u16.to_le_bytes());
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p
}

#[test]
fn mariadb_greeting_is_parsed_and_patched() {
    let raw = unhex(MARIADB_GREETING);
    let mut seq = 0;
    let mut payload = Vec::new();
    assert_eq!(
        decode_message(&raw, &mut seq, 1 << 20, &mut payload),
        Ok(Some(raw.len()))
    );
    assert_eq!(seq, 1);
    let g = parse_greeting(&payload).unwrap();
    assert_eq!(g.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1");
    assert_eq!(g.connection_id, 4);
    assert_eq!(g.mariadb_ext, Some(0x1d));
    assert_eq!(g.auth_plugin.as_deref(), Some("mysql_native_password"));
    assert!(
        g.capabilities & caps::SSL != 0,
        "captured from a server with TLS"
    );
    assert!(g.capabilities & caps::DEPRECATE_EOF != 0);
    assert!(g.capabilities & caps::COMPRESS != 0);

    let offered = (g.capabilities & caps::SUPPORTED) | caps::SSL;
    let patched = patch_greeting(&payload, &g, offered, 0);
    assert_eq!(patched.len(), payload.len());
    let g2 = parse_greeting(&patched).unwrap();
    assert_eq!(g2.capabilities, offered);
    assert!(g2.capabilities & caps::COMPRESS == 0);
    assert!(g2.capabilities & caps::SSL != 0);
    assert_eq!(g2.mariadb_ext, Some(0));
    assert_eq!(g2.server_version, g.server_version);
    assert_eq!(g2.auth_plugin, g.auth_plugin);
    // Only capability bytes changed.
    let diff: Vec<usize> = (0..payload.len())
        .filter(|&i| payload[i] != patched[i])
        .collect();
    assert!(diff.iter().all(|&i| i == g.caps_low_at
        || i == g.caps_low_at + 1
        || Some(i) == g.caps_high_at
        || Some(i) == g.caps_high_at.map(|x| x + 1)
        || g.ext_at.is_some_and(|e| (e..e + 4).contains(&i))));
}

fn handshake_response(caps_: u32, user: &str, db: Option<&str>) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&caps_.to_le_bytes());
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 19]);
    p.extend_from_slice(&0x1du32.to_le_bytes()); // MariaDB extended caps
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(20);
    p.extend_from_slice(&[0xaa; 20]);
    if let Some(d) = db {
        p.extend_from_slice(d.as_bytes());
        p.push(0);
    }
    p.extend_from_slice(b"mysql_native_password\0");
    p
}

#[test]
fn handshake_response_is_parsed_and_patched() {
    let c = caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::CONNECT_WITH_DB
        | caps::COMPRESS
        | caps::DEPRECATE_EOF;
    let p = handshake_response(c, "app", Some("shop"));
    let r = parse_handshake_response(&p).unwrap();
    assert_eq!(r.user, "app");
    assert_eq!(r.database.as_deref(), Some("shop"));
    assert_eq!(r.auth_plugin.as_deref(), Some("mysql_native_password"));
    assert!(!is_ssl_request(&p));
    let patched = patch_handshake_response(&p, c & caps::SUPPORTED);
    let r2 = parse_handshake_response(&patched).unwrap();
    assert_eq!(r2.capabilities & caps::COMPRESS, 0);
    assert_eq!(&patched[28..32], &[0, 0, 0, 0]);
    assert_eq!(&patched[32..], &p[32..]);

    let ssl = ssl_request(c, 1 << 24, 45);
    assert!(is_ssl_request(&ssl));
    assert_eq!(ssl.len(), SSL_REQUEST_LEN);

    // Pre-4.1 clients and truncations are errors, not panics.
    assert!(
        parse_handshake_response(&handshake_response(caps::SECURE_CONNECTION, "x", None)).is_err()
    );
    for n in 0..p.len() - 25 {
        let _ = parse_handshake_response(&p[..n]);
    }
    assert!(parse_handshake_response(&p[..40]).is_err());
}

#[test]
fn ok_err_and_eof() {
    let ok = [0x00, 0xfc, 0x10, 0x27, 0x05, 0x08, 0x00, 0x01, 0x00];
    let o = parse_ok(&ok).unwrap();
    assert_eq!(o.affected_rows, 10000);
    assert_eq!(o.last_insert_id, 5);
    assert_eq!(o.status, status::MORE_RESULTS_EXISTS);
    assert_eq!(o.warnings, 1);

    let e = err_packet(1227, Some("42000"), "interceptor denied this command");
    let p = parse_err(&e).unwrap();
    assert_eq!(p.code, 1227);
    assert_eq!(p.sqlstate.as_deref(), Some("42000"));
    assert_eq!(p.message, "interceptor denied this command");
    let e = err_packet(1045, None, "no state");
    let p = parse_err(&e).unwrap();
    assert_eq!(p.code, 1045);
    assert_eq!(p.sqlstate, None);
    assert_eq!(p.message, "no state");

    let eof = [0xfe, 0x00, 0x00, 0x22, 0x00];
    assert!(is_terminator(&eof, false));
    assert_eq!(terminator_status(&eof, false).unwrap(), 0x22);
    let ok_eof = [0xfe, 0x00, 0x00, 0x48, 0x00, 0x00, 0x00];
    assert!(is_terminator(&ok_eof, true));
    assert_eq!(terminator_status(&ok_eof, true).unwrap(), 0x48);
    // A text row whose first value is >= 16 MiB starts with 0xfe too.
    let mut big = vec![0xfe];
    big.extend_from_slice(&(MAX_PAYLOAD as u64).to_le_bytes());
    big.resize(MAX_PAYLOAD + 9, b'x');
    assert!(!is_terminator(&big, true));
    assert!(!is_terminator(&big, false));
}

#[test]
fn text_rows_are_masked_with_lengths_rebuilt() {
    let m = card_masks();
    let defs = [
        column("card", types::VAR_STRING, 45),
        column("password", types::VAR_STRING, 45),
        column("id", types::LONGLONG, 63),
        column("raw", types::BLOB, BINARY_CHARSET),
        column("note", types::VAR_STRING, 45),
    ];
    let plans: Vec<ColumnPlan> = defs
        .iter()
        .map(|d| ColumnPlan::new(&parse_column_def(d).unwrap(), &m))
        .collect();
    assert_eq!(plans[0].kind, ValueKind::Text);
    assert!(!plans[0].masked);
    assert!(plans[1].masked);
    assert_eq!(plans[2].kind, ValueKind::Numeric);
    assert_eq!(plans[3].kind, ValueKind::Binary);

    let long_note = "n".repeat(300); // a 0xfc length prefix
    let mut row = Vec::new();
    put_lenenc_bytes(&mut row, b"card 4111111111111111 end");
    put_lenenc_bytes(&mut row, b"hunter2");
    put_lenenc_bytes(&mut row, b"4111111111111111");
    put_lenenc_bytes(&mut row, b"4111111111111111");
    put_lenenc_bytes(&mut row, long_note.as_bytes());
    let mut out = Vec::new();
    assert!(mask_text_row(&row, &plans, &m, &mut out).unwrap());
    let mut c = Cursor::new(&out);
    assert_eq!(
        c.lenenc_bytes("v").unwrap(),
        b"card <masked:credit_card> end"
    );
    assert_eq!(c.lenenc_bytes("v").unwrap(), b"****");
    assert_eq!(
        c.lenenc_bytes("v").unwrap(),
        b"4111111111111111",
        "numeric left alone"
    );
    assert_eq!(
        c.lenenc_bytes("v").unwrap(),
        b"4111111111111111",
        "binary left alone"
    );
    assert_eq!(c.lenenc_bytes("v").unwrap(), long_note.as_bytes());
    assert!(c.is_empty());

    // NULLs stay NULL; an unchanged row is reported unchanged.
    let mut row = vec![0xfb, 0xfb];
    put_lenenc_bytes(&mut row, b"1");
    row.push(0xfb);
    put_lenenc_bytes(&mut row, b"hello");
    assert!(!mask_text_row(&row, &plans, &m, &mut out).unwrap());
    assert_eq!(out, row);

    // Short and long rows are errors.
    assert!(mask_text_row(&row[..row.len() - 1], &plans, &m, &mut out).is_err());
    let mut long = row.clone();
    long.push(0);
    assert!(mask_text_row(&long, &plans, &m, &mut out).is_err());
}

#[test]
fn binary_rows_mask_strings_and_never_corrupt_numbers() {
    let m = masks(
        "[[mask]]\ndetectors = [\"credit_card\"]\ncolumns = [\"password*\", \"secret_n\", \"born\"]\n",
    );
    let plans: Vec<ColumnPlan> = [
        column("id", types::LONGLONG, 63),
        column("card", types::VAR_STRING, 45),
        column("password", types::STRING, 45),
        column("secret_n", types::LONG, 63),
        column("born", types::DATE, 63),
        column("price", types::DOUBLE, 63),
        column("gone", types::VAR_STRING, 45),
    ]
    .iter()
    .map(|d| ColumnPlan::new(&parse_column_def(d).unwrap(), &m))
    .collect();
    // 7 columns: bitmap of (7 + 9) / 8 = 2 bytes; column 6 (bit 8) NULL.
    let mut row = vec![0x00, 0x00, 0x01];
    row.extend_from_slice(&4111111111111111u64.to_le_bytes());
    put_lenenc_bytes(&mut row, b"4111111111111111");
    put_lenenc_bytes(&mut row, b"pw");
    row.extend_from_slice(&42u32.to_le_bytes());
    row.extend_from_slice(&[4, 0xd0, 0x07, 1, 2]);
    row.extend_from_slice(&1.5f64.to_le_bytes());
    let mut out = Vec::new();
    assert!(mask_binary_row(&row, &plans, &m, &mut out).unwrap());
    let mut c = Cursor::new(&out);
    assert_eq!(c.take(3, "h").unwrap(), &[0, 0, 1]);
    assert_eq!(c.u64("id").unwrap(), 4111111111111111, "integers untouched");
    assert_eq!(c.lenenc_bytes("card").unwrap(), b"<masked:credit_card>");
    assert_eq!(c.lenenc_bytes("pw").unwrap(), b"****");
    assert_eq!(
        c.u32("secret_n").unwrap(),
        0,
        "a masked integer is zero, same width"
    );
    assert_eq!(c.u8("born").unwrap(), 0, "a masked date is the zero date");
    assert_eq!(f64::from_bits(c.u64("price").unwrap()), 1.5);
    assert!(c.is_empty());

    for n in 0..row.len() {
        assert!(mask_binary_row(&row[..n], &plans, &m, &mut out).is_err());
    }
}

#[test]
fn execute_parameters_are_decoded() {
    let mut p = vec![com::STMT_EXECUTE];
    p.extend_from_slice(&7u32.to_le_bytes());
    p.push(0);
    p.extend_from_slice(&1u32.to_le_bytes());
    // 5 params, #3 NULL.
    p.push(0b0000_1000);
    p.push(1);
    for (t, f) in [
        (types::LONGLONG, 0u8),
        (types::VAR_STRING, 0),
        (types::TINY, 0x80),
        (types::STRING, 0),
        (types::DATETIME, 0),
    ] {
        p.push(t);
        p.push(f);
    }
    p.extend_from_slice(&(-5i64).to_le_bytes());
    put_lenenc_bytes(&mut p, b"4111111111111111");
    p.push(200);
    p.extend_from_slice(&[7, 0xea, 0x07, 11, 29, 16, 20, 47]);
    let mut types_ = Vec::new();
    let e = parse_execute(&p, 5, &mut types_, &[false; 5]).unwrap();
    assert_eq!(e.statement_id, 7);
    assert_eq!(
        e.params,
        vec![
            ParamValue::Int(-5),
            ParamValue::Text("4111111111111111".into()),
            ParamValue::UInt(200),
            ParamValue::Null,
            ParamValue::Temporal("2026-11-29 16:20:47".into()),
        ]
    );
    assert_eq!(types_.len(), 5);

    // A re-execution without new types uses the bound ones.
    let mut q = p[..10].to_vec();
    q.truncate(10);
    q.push(0b0001_1111);
    q.push(0);
    let e = parse_execute(&q, 5, &mut types_, &[false; 5]).unwrap();
    assert!(e.params.iter().all(|v| *v == ParamValue::Null));
    // ... and without any bound types it is malformed.
    assert!(parse_execute(&q, 5, &mut Vec::new(), &[false; 5]).is_err());
    for n in 0..p.len() {
        let _ = parse_execute(&p[..n], 5, &mut Vec::new(), &[false; 5]);
    }
    assert!(parse_execute(&p[..p.len() - 1], 5, &mut Vec::new(), &[false; 5]).is_err());
}

#[test]
fn framing_checks_sequence_and_size() {
    let mut seq = 0;
    let mut out = Vec::new();
    encode_message(b"hello", &mut seq, &mut out);
    encode_message(b"", &mut seq, &mut out);
    assert_eq!(seq, 2);
    let mut s = 0;
    let mut msg = Vec::new();
    assert_eq!(decode_message(&out, &mut s, 100, &mut msg), Ok(Some(9)));
    assert_eq!(msg, b"hello");
    assert_eq!(
        decode_message(&out[9..], &mut s, 100, &mut msg),
        Ok(Some(4))
    );
    assert!(msg.is_empty());
    // Incomplete.
    let mut s = 0;
    assert_eq!(decode_message(&out[..6], &mut s, 100, &mut msg), Ok(None));
    // Wrong sequence id.
    let mut s = 3;
    assert_eq!(
        decode_message(&out, &mut s, 100, &mut msg),
        Err(FrameError::Sequence {
            expected: 3,
            got: 0
        })
    );
    // Too large.
    let mut s = 0;
    assert_eq!(
        decode_message(&out, &mut s, 4, &mut msg),
        Err(FrameError::TooLarge { len: 5 })
    );
}

#[test]
fn garbage_never_panics() {
    let m = card_masks();
    let plans = [ColumnPlan {
        column_type: types::VAR_STRING,
        kind: ValueKind::Text,
        masked: false,
        withheld: false,
    }];
    let mut out = Vec::new();
    let mut state = 0x1234_5678u32;
    for len in 0..200 {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let _ = parse_greeting(&data);
        let _ = parse_handshake_response(&data);
        let _ = parse_ok(&data);
        let _ = parse_err(&data);
        let _ = parse_column_def(&data);
        let _ = parse_prepare_ok(&data);
        let _ = parse_change_user(&data, caps::SECURE_CONNECTION);
        let _ = mask_text_row(&data, &plans, &m, &mut out);
        let _ = mask_binary_row(&data, &plans, &m, &mut out);
        let _ = parse_execute(&data, 3, &mut Vec::new(), &[false; 3]);
        let _ = terminator_status(&data, true);
        let mut s = 0;
        let _ = decode_message(&data, &mut s, 1 << 20, &mut out);
    }
    // A lenenc length beyond the buffer (or beyond usize) is an error.
    let mut c = Cursor::new(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(c.lenenc_bytes("x").is_err());
}

#[test]
fn withheld_messages_are_replaced_in_both_protocols() {
    let m = no_masks();
    let mut plans: Vec<ColumnPlan> = [
        column("Level", types::VAR_STRING, 45),
        column("Code", types::LONG, 63),
        column("Message", types::VAR_STRING, 45),
    ]
    .iter()
    .map(|d| ColumnPlan::new(&parse_column_def(d).unwrap(), &m))
    .collect();
    plans[2].withheld = true;
    assert!(plans[2].active(&m) && !plans[0].active(&m));

    let mut row = Vec::new();
    put_lenenc_bytes(&mut row, b"Warning");
    put_lenenc_bytes(&mut row, b"1292");
    put_lenenc_bytes(&mut row, b"Truncated incorrect INTEGER value: 'hunter2'");
    let mut out = Vec::new();
    assert!(mask_text_row(&row, &plans, &m, &mut out).unwrap());
    let mut c = Cursor::new(&out);
    assert_eq!(c.lenenc_bytes("v").unwrap(), b"Warning");
    assert_eq!(c.lenenc_bytes("v").unwrap(), b"1292", "the code is kept");
    assert_eq!(c.lenenc_bytes("v").unwrap(), WITHHELD_MESSAGE.as_bytes());

    // Binary protocol: 3 columns, a 1-byte NULL bitmap.
    let mut row = vec![0x00, 0x00];
    put_lenenc_bytes(&mut row, b"Warning");
    row.extend_from_slice(&1292u32.to_le_bytes());
    put_lenenc_bytes(&mut row, b"'hunter2'");
    assert!(mask_binary_row(&row, &plans, &m, &mut out).unwrap());
    let mut c = Cursor::new(&out);
    c.take(2, "h").unwrap();
    assert_eq!(c.lenenc_bytes("v").unwrap(), b"Warning");
    assert_eq!(c.u32("code").unwrap(), 1292);
    assert_eq!(c.lenenc_bytes("v").unwrap(), WITHHELD_MESSAGE.as_bytes());
    assert!(c.is_empty());
}
