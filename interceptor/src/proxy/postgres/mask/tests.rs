use super::*;
use policy::Policy;

fn masks() -> ActiveMasks {
    let p = Policy::parse(
        "[[mask]]\ndetectors = [\"credit_card\", \"email\", \"phone\", \"private_key\"]\ncolumns = [\"password*\", \"ssn\", \"meta\", \"amount\", \"born\", \"secret*\"]\n",
        "policy.toml",
    )
    .unwrap();
    let w = policy::Workload::default();
    let t = policy::Target {
        protocol: policy::Protocol::Postgres,
        addr: "127.0.0.1".parse().unwrap(),
        port: 5432,
        host: None,
        database: None,
        user: None,
    };
    p.masker().for_context(&w, &t)
}

fn row_desc(fields: &[(&str, u32, i16)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for (name, oid, fmt) in fields {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&fmt.to_be_bytes());
    }
    b
}

fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        put_value(&mut b, *v);
    }
    b
}

/// The values of a DataRow message, checking its framing.
fn values(msg: &[u8]) -> Vec<Option<Vec<u8>>> {
    let (f, n) = codec::split_frame(msg, 1 << 30).unwrap().unwrap();
    assert_eq!(n, msg.len(), "length field matches");
    assert_eq!(f.tag, b'D');
    codec::check_backend(f).unwrap();
    let mut it = DataRowIter::new(f.body).unwrap();
    let mut out = Vec::new();
    while let Some(v) = it.next().unwrap() {
        out.push(v.map(<[u8]>::to_vec));
    }
    out
}

/// Masks one value as the only column of a row; `None` in the result is
/// NULL. Also returns whether the row was reported changed.
fn one(m: &ActiveMasks, name: &str, oid: u32, fmt: i16, v: &[u8]) -> (Option<Vec<u8>>, bool) {
    let plan = RowPlan::new(&row_desc(&[(name, oid, fmt)]), m, &[]).unwrap();
    let mut out = Vec::new();
    let changed = plan.mask_row(m, &data_row(&[Some(v)]), &mut out).unwrap();
    if !changed {
        return (Some(v.to_vec()), false);
    }
    (values(&out).remove(0), true)
}

// ------------------------------------------------------------ binary builders

fn bin_array(elem: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    b.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
    b.extend_from_slice(&elem.to_be_bytes());
    for (n, lb) in dims {
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&lb.to_be_bytes());
    }
    for e in elems {
        put_value(&mut b, *e);
    }
    b
}

fn bin_record(fields: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(fields.len() as i32).to_be_bytes());
    for (oid, v) in fields {
        b.extend_from_slice(&oid.to_be_bytes());
        put_value(&mut b, *v);
    }
    b
}

/// Decodes a binary array: (ndim, flags, elem, dims, elements), strictly.
#[allow(clippy::type_complexity)]
fn dec_array(v: &[u8]) -> (i32, i32, u32, Vec<(i32, i32)>, Vec<Option<Vec<u8>>>) {
    let mut c = codec::Cursor::new(v, "t");
    let ndim = c.i32().unwrap();
    let flags = c.i32().unwrap();
    let elem = c.i32().unwrap() as u32;
    let mut dims = Vec::new();
    let mut n = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let d = (c.i32().unwrap(), c.i32().unwrap());
        n *= d.0 as usize;
        dims.push(d);
    }
    let mut elems = Vec::new();
    for _ in 0..n {
        let len = c.i32().unwrap();
        elems.push((len >= 0).then(|| c.bytes(len as usize).unwrap().to_vec()));
    }
    c.end().unwrap();
    (ndim, flags, elem, dims, elems)
}

#[allow(clippy::type_complexity)]
fn dec_record(v: &[u8]) -> Vec<(u32, Option<Vec<u8>>)> {
    let mut c = codec::Cursor::new(v, "t");
    let n = c.i32().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let oid = c.i32().unwrap() as u32;
        let len = c.i32().unwrap();
        out.push((
            oid,
            (len >= 0).then(|| c.bytes(len as usize).unwrap().to_vec()),
        ));
    }
    c.end().unwrap();
    out
}

// ------------------------------------------------------------ plans

#[test]
fn masks_by_column_and_detector_keeping_types() {
    let m = masks();
    let desc = row_desc(&[
        ("id", 23, 0),
        ("card", 25, 0),
        ("password_hash", 1043, 0),
        ("ssn", 23, 1),
        ("meta", 3802, 0),
        ("amount", 1700, 0),
        ("born", 1082, 0),
        ("note", 1009, 0),
        ("flag", 18, 0),
    ]);
    let plan = RowPlan::new(
        &desc,
        &m,
        &[false, false, false, false, false, false, false, false, true],
    )
    .unwrap();
    assert_eq!(plan.columns()[0], Col::Pass);
    assert!(plan.masks_columns());
    let row = data_row(&[
        Some(b"7"),
        Some(b"paid 4111111111111111 ok"),
        Some(b"hunter2"),
        Some(&[0, 0, 0x30, 0x39]),
        Some(br#"{"a":1}"#),
        Some(b"12.50"),
        Some(b"1990-01-01"),
        Some(b"{bob@example.com}"),
        Some(b"x"),
    ]);
    let mut out = Vec::new();
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    let v = values(&out);
    assert_eq!(v[0].as_deref(), Some(&b"7"[..]));
    assert_eq!(v[1].as_deref(), Some(&b"paid <masked:credit_card> ok"[..]));
    assert_eq!(v[2].as_deref(), Some(&b"****"[..]));
    assert_eq!(
        v[3].as_deref(),
        Some(&[0u8, 0, 0, 0][..]),
        "binary int4 zero"
    );
    assert_eq!(v[4].as_deref(), Some(&b"\"****\""[..]), "json stays json");
    assert_eq!(v[5].as_deref(), Some(&b"0"[..]));
    assert_eq!(v[6], None, "a masked date becomes NULL");
    assert_eq!(v[7].as_deref(), Some(&b"{<masked:email>}"[..]));
    assert_eq!(
        v[8].as_deref(),
        Some(&b"*"[..]),
        "a masked \"char\" stays one byte"
    );
}

#[test]
fn forced_positions_mask_columns_whatever_their_label() {
    let m = masks();
    let desc = row_desc(&[("a", 25, 0), ("b", 23, 1), ("c", 25, 0)]);
    // Position 1 forced; position 2 is past the end of `forced`.
    let plan = RowPlan::new(&desc, &m, &[false, true]).unwrap();
    assert_eq!(
        plan.columns()[1],
        Col::Masked {
            oid: 23,
            binary: true
        }
    );
    assert_eq!(
        plan.columns()[2],
        Col::Detect {
            oid: 25,
            binary: false
        }
    );
    let mut out = Vec::new();
    let row = data_row(&[Some(b"x"), Some(&7i32.to_be_bytes()), Some(b"y")]);
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    assert_eq!(
        values(&out),
        vec![Some(b"x".to_vec()), Some(vec![0; 4]), Some(b"y".to_vec())]
    );
    // Forced columns are masked even without any detector or rule.
    let none = ActiveMasks::default();
    let plan = RowPlan::new(&desc, &none, &[true]).unwrap();
    assert!(plan.is_active());
    assert!(plan.mask_row(&none, &row, &mut out).unwrap());
    assert_eq!(values(&out)[0].as_deref(), Some(&b"****"[..]));
}

#[test]
fn cache_keys_tell_forced_vectors_apart() {
    let d = row_desc(&[("a", 25, 0), ("b", 25, 0)]);
    let k = RowPlan::cache_key;
    assert_eq!(k(&d, &[]), k(&d, &[false, false, false]));
    assert_ne!(k(&d, &[]), k(&d, &[true]));
    assert_ne!(k(&d, &[true]), k(&d, &[false, true]));
    assert_eq!(k(&d, &[false, true]), k(&d, &[false, true, false]));
    // Nine positions span two bytes.
    let mut f = [false; 9];
    f[8] = true;
    assert_ne!(k(&d, &f), k(&d, &[]));
    // The description's length is part of the key.
    let d2 = row_desc(&[("a", 25, 0)]);
    assert_ne!(k(&d2, &[]), k(&d, &[]));
}

#[test]
fn untouched_rows_are_not_rewritten() {
    let m = masks();
    let plan = RowPlan::new(&row_desc(&[("id", 23, 0), ("name", 25, 0)]), &m, &[]).unwrap();
    let mut out = Vec::new();
    let row = data_row(&[Some(b"1"), Some(b"alice")]);
    assert!(!plan.mask_row(&m, &row, &mut out).unwrap());
    let none = ActiveMasks::default();
    let plan = RowPlan::new(&row_desc(&[("password", 25, 0)]), &none, &[]).unwrap();
    assert!(!plan.is_active());
    // Numbers and opaque types are not looked at by detectors.
    let plan = RowPlan::new(
        &row_desc(&[("n", 20, 0), ("d", 1082, 1), ("a", 1016, 0)]),
        &m,
        &[],
    )
    .unwrap();
    assert!(!plan.is_active());
}

#[test]
fn malformed_rows_and_descriptions_are_errors() {
    let m = masks();
    let plan = RowPlan::new(&row_desc(&[("a", 25, 0)]), &m, &[]).unwrap();
    let mut out = Vec::new();
    assert!(
        plan.mask_row(&m, &[0, 1, 0, 0, 0, 5, b'x'], &mut out)
            .is_err()
    );
    assert!(plan.mask_row(&m, &[0xff, 0xff], &mut out).is_err());
    assert!(RowPlan::new(&[0, 1, b'a'], &m, &[]).is_err());
    assert!(
        RowPlan::new(&row_desc(&[("a", 25, 2)]), &m, &[]).is_err(),
        "format code 2"
    );
}

#[test]
fn a_row_that_does_not_match_its_description() {
    let m = masks();
    // Detectors only: values are looked at blind; a finding is NULL.
    let plan = RowPlan::new(&row_desc(&[("a", 25, 0)]), &m, &[]).unwrap();
    let mut out = Vec::new();
    let row = data_row(&[Some(b"x"), Some(b"bob@example.com")]);
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    assert_eq!(values(&out), vec![Some(b"x".to_vec()), None]);
    // A masked column: which value is which is unknown, so it is an error.
    let plan = RowPlan::new(&row_desc(&[("password", 25, 0)]), &m, &[]).unwrap();
    assert!(plan.mask_row(&m, &row, &mut out).is_err());
    // Blind plan.
    let plan = RowPlan::blind(&m);
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    assert_eq!(values(&out), vec![Some(b"x".to_vec()), None]);
    // Withholding plan: nothing goes out.
    let plan = RowPlan::withhold_all();
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    assert_eq!(values(&out), vec![None, None]);
}

// ------------------------------------------------------------ binary values

#[test]
fn binary_text_and_jsonb_are_masked_binary_numbers_never_detected() {
    let m = masks();
    let desc = row_desc(&[
        ("c", 25, 1),
        ("j", 3802, 1),
        ("n", 20, 1),
        ("meta", 3802, 1),
        ("amount", 1700, 1),
    ]);
    let plan = RowPlan::new(&desc, &m, &[]).unwrap();
    let mut jb = vec![1u8];
    jb.extend_from_slice(br#"{"e":"bob@example.com"}"#);
    let row = data_row(&[
        Some(b"4111 1111 1111 1111"),
        Some(&jb),
        Some(&4111111111111111i64.to_be_bytes()),
        Some(&jb),
        Some(&[0, 1, 0, 0, 0, 0, 0, 2, 0, 7]),
    ]);
    let mut out = Vec::new();
    assert!(plan.mask_row(&m, &row, &mut out).unwrap());
    let v = values(&out);
    assert_eq!(v[0].as_deref(), Some(&b"<masked:credit_card>"[..]));
    assert_eq!(
        v[1].as_deref(),
        Some(&b"\x01{\"e\":\"<masked:email>\"}"[..])
    );
    assert_eq!(
        v[2].as_deref(),
        Some(&4111111111111111i64.to_be_bytes()[..])
    );
    assert_eq!(v[3].as_deref(), Some(&b"\x01\"****\""[..]));
    assert_eq!(v[4].as_deref(), Some(&[0u8; 8][..]), "numeric zero");
    // A jsonb version this code cannot read: NULL when a detector fires.
    let (v, _) = one(&m, "j", 3802, 1, b"\x02{\"e\":\"bob@example.com\"}");
    assert_eq!(v, None);
    let (v, changed) = one(&m, "j", 3802, 1, b"\x02{}");
    assert!(!changed && v.is_some());
}

#[test]
fn binary_arrays_are_masked_element_by_element_keeping_their_header() {
    let m = masks();
    // 2×2 text[] with lower bounds 0 and 5, one NULL.
    let arr = bin_array(
        25,
        &[(2, 0), (2, 5)],
        &[Some(b"a"), None, Some(b"bob@example.com"), Some(b"")],
    );
    let (v, _) = one(&m, "secret_list", 1009, 1, &arr);
    let (ndim, flags, elem, dims, elems) = dec_array(&v.unwrap());
    assert_eq!((ndim, flags, elem, dims), (2, 1, 25, vec![(2, 0), (2, 5)]));
    assert_eq!(
        elems,
        vec![
            Some(b"****".to_vec()),
            None,
            Some(b"****".to_vec()),
            Some(b"****".to_vec())
        ]
    );
    // Detectors: per element.
    let (v, _) = one(&m, "list", 1009, 1, &arr);
    let (_, _, _, _, elems) = dec_array(&v.unwrap());
    assert_eq!(elems[2].as_deref(), Some(&b"<masked:email>"[..]));
    assert_eq!(elems[0].as_deref(), Some(&b"a"[..]));
    // Numbers: zeros of the element width; the flag stays 0.
    let ints = bin_array(
        23,
        &[(3, 1)],
        &[
            Some(&1i32.to_be_bytes()),
            Some(&2i32.to_be_bytes()),
            Some(&3i32.to_be_bytes()),
        ],
    );
    let (v, _) = one(&m, "secret_ids", 1007, 1, &ints);
    let (_, flags, elem, _, elems) = dec_array(&v.unwrap());
    assert_eq!((flags, elem), (0, 23));
    assert!(elems.iter().all(|e| e.as_deref() == Some(&[0u8; 4][..])));
    let nums = bin_array(1700, &[(1, 1)], &[Some(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 42])]);
    let (v, _) = one(&m, "amount", 1231, 1, &nums);
    assert_eq!(dec_array(&v.unwrap()).4, vec![Some(vec![0u8; 8])]);
    // Dates: no stand-in, so NULL elements and the has-null flag set.
    let dates = bin_array(1082, &[(2, 1)], &[Some(&[0, 0, 1, 0]), Some(&[0, 0, 2, 0])]);
    let (v, _) = one(&m, "born", 1182, 1, &dates);
    let (_, flags, elem, _, elems) = dec_array(&v.unwrap());
    assert_eq!((flags, elem, elems), (1, 1082, vec![None, None]));
    // An empty array (ndim 0) stays empty; json elements become "****".
    let empty = bin_array(25, &[], &[]);
    let (v, _) = one(&m, "secret", 1009, 1, &empty);
    assert_eq!(v.as_deref(), Some(&empty[..]));
    let js = bin_array(3802, &[(1, 1)], &[Some(b"\x01{}")]);
    let (v, _) = one(&m, "secret", 3807, 1, &js);
    assert_eq!(
        dec_array(&v.unwrap()).4,
        vec![Some(b"\x01\"****\"".to_vec())]
    );
}

#[test]
fn binary_records_are_masked_field_by_field_recursively() {
    let m = masks();
    let inner = bin_record(&[
        (25, Some(b"bob@example.com")),
        (23, Some(&5i32.to_be_bytes())),
    ]);
    let arr = bin_array(25, &[(1, 1)], &[Some(b"call +44 20 7946 0958")]);
    let rec = bin_record(&[
        (25, Some(b"x")),
        (23, Some(&9i32.to_be_bytes())),
        (1082, Some(&[0, 0, 0, 1])),
        (2249, Some(&inner)),
        (1009, Some(&arr)),
        (25, None),
    ]);
    // Masked whole.
    let (v, _) = one(&m, "secret_row", 2249, 1, &rec);
    let f = dec_record(&v.unwrap());
    assert_eq!(
        f.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![25, 23, 1082, 2249, 1009, 25]
    );
    assert_eq!(f[0].1.as_deref(), Some(&b"****"[..]));
    assert_eq!(f[1].1.as_deref(), Some(&[0u8; 4][..]));
    assert_eq!(f[2].1, None);
    let inner_m = dec_record(f[3].1.as_deref().unwrap());
    assert_eq!(inner_m[0].1.as_deref(), Some(&b"****"[..]));
    assert_eq!(
        dec_array(f[4].1.as_deref().unwrap()).4,
        vec![Some(b"****".to_vec())]
    );
    assert_eq!(f[5].1, None);
    // Detectors.
    let (v, _) = one(&m, "r", 2249, 1, &rec);
    let f = dec_record(&v.unwrap());
    assert_eq!(f[0].1.as_deref(), Some(&b"x"[..]));
    assert_eq!(f[1].1.as_deref(), Some(&9i32.to_be_bytes()[..]));
    assert_eq!(
        dec_record(f[3].1.as_deref().unwrap())[0].1.as_deref(),
        Some(&b"<masked:email>"[..])
    );
    assert_eq!(
        dec_array(f[4].1.as_deref().unwrap()).4,
        vec![Some(b"call <masked:phone>".to_vec())]
    );
}

#[test]
fn binary_values_of_unknown_types() {
    let m = masks();
    let enum_oid = 16_400;
    // Masked whole: NULL.
    assert_eq!(one(&m, "secret", enum_oid, 1, b"red").0, None);
    // Detectors find nothing: unchanged, no rewrite.
    assert_eq!(
        one(&m, "c", enum_oid, 1, b"red"),
        (Some(b"red".to_vec()), false)
    );
    // An enum label with an address: no structure to rewrite, NULL.
    assert_eq!(one(&m, "c", enum_oid, 1, b"bob@example.com").0, None);
    // A composite with its own OID: decoded as a record, masked per field.
    let rec = bin_record(&[
        (25, Some(b"bob@example.com")),
        (23, Some(&1i32.to_be_bytes())),
    ]);
    let (v, _) = one(&m, "c", 16_500, 1, &rec);
    let f = dec_record(&v.unwrap());
    assert_eq!(f[0].1.as_deref(), Some(&b"<masked:email>"[..]));
    // An array of that composite (its array OID is unknown too).
    let arr = bin_array(16_500, &[(1, 1)], &[Some(&rec)]);
    let (v, _) = one(&m, "c", 16_501, 1, &arr);
    let (_, _, elem, _, elems) = dec_array(&v.unwrap());
    assert_eq!(elem, 16_500);
    assert_eq!(
        dec_record(elems[0].as_deref().unwrap())[0].1.as_deref(),
        Some(&b"<masked:email>"[..])
    );
    // A record field of an unknown type with an address and no structure.
    let rec = bin_record(&[(16_400, Some(b"bob@example.com"))]);
    let (v, _) = one(&m, "c", 2249, 1, &rec);
    assert_eq!(dec_record(&v.unwrap())[0].1, None);
    // Structure decodes but the finding is not in a value it can rewrite
    // (it spans fields): NULL as a whole.
    let rec = bin_record(&[(23, Some(b"4111")), (16_400, None)]);
    let (v, changed) = one(&m, "c", 2249, 1, &rec);
    assert!(!changed && v.is_some(), "nothing fires here");
}

#[test]
fn bytea_is_looked_at_decoded() {
    let m = masks();
    // Binary: raw bytes.
    let (v, _) = one(&m, "b", 17, 1, b"\x00\x01bob@example.com");
    assert_eq!(v.as_deref(), Some(&b"\x00\x01<masked:email>"[..]));
    // Text, hex format: the hex hides the address from a plain scan.
    let hex = literal::bytea_hex(b"to bob@example.com");
    let (v, _) = one(&m, "b", 17, 0, &hex);
    assert_eq!(v.unwrap(), literal::bytea_hex(b"to <masked:email>"));
    // Escape format: decoded, answered in hex.
    let (v, _) = one(&m, "b", 17, 0, b"\\000bob@example.com\\\\");
    assert_eq!(v.unwrap(), literal::bytea_hex(b"\x00<masked:email>\\"));
    // Masked whole: NULL; nothing found: unchanged.
    assert_eq!(one(&m, "secret", 17, 0, b"\\x00").0, None);
    assert!(!one(&m, "b", 17, 0, b"\\x6869").1);
    // bytea[]: each element decoded, even though the literal shows nothing.
    let lit = format!("{{\"\\{}\",NULL}}", String::from_utf8(hex).unwrap());
    let (v, _) = one(&m, "b", 1001, 0, lit.as_bytes());
    let want = format!(
        "{{\"\\{}\",NULL}}",
        String::from_utf8(literal::bytea_hex(b"to <masked:email>")).unwrap()
    );
    assert_eq!(String::from_utf8(v.unwrap()).unwrap(), want);
    // Not bytea text at all, with a finding: NULL.
    assert_eq!(one(&m, "b", 17, 0, b"\\q bob@example.com").0, None);
}

#[test]
fn malformed_binary_values_become_null_never_panic() {
    let m = masks();
    let good = bin_array(25, &[(2, 1)], &[Some(b"a"), Some(b"bob@example.com")]);
    let mut bad: Vec<Vec<u8>> = vec![
        good[..good.len() - 1].to_vec(), // truncated
        good[..10].to_vec(),             // inside the header
        [&good[..], b"x"].concat(),      // trailing byte
        {
            let mut b = good.clone();
            b[3] = 7; // ndim 7
            b
        },
        {
            let mut b = good.clone();
            b[7] = 2; // has-null flag 2
            b
        },
        {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // negative size
            b
        },
        {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&i32::MAX.to_be_bytes()); // absurd size
            b
        },
        {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&(-7i32).to_be_bytes()); // element length below -1
            b
        },
        {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&i32::MAX.to_be_bytes()); // element length past the end
            b
        },
    ];
    // Six dimensions whose product overflows.
    let mut huge = Vec::new();
    huge.extend_from_slice(&6i32.to_be_bytes());
    huge.extend_from_slice(&0i32.to_be_bytes());
    huge.extend_from_slice(&25u32.to_be_bytes());
    for _ in 0..6 {
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        huge.extend_from_slice(&1i32.to_be_bytes());
    }
    huge.extend_from_slice(b"bob@example.com");
    bad.push(huge);
    // Records: absurd field count, truncated field.
    let mut rec = bin_record(&[(25, Some(b"bob@example.com"))]);
    rec[0..4].copy_from_slice(&i32::MAX.to_be_bytes());
    bad.push(rec);
    let rec = bin_record(&[(25, Some(b"bob@example.com"))]);
    bad.push(rec[..rec.len() - 2].to_vec());
    for b in &bad {
        assert_eq!(one(&m, "secret", 1009, 1, b).0, None, "masked: {b:?}");
        assert_eq!(one(&m, "secret", 2249, 1, b).0, None);
        // Detectors fire on the address: NULL.
        if value::fires(&m, b) {
            assert_eq!(one(&m, "x", 1009, 1, b).0, None, "detect: {b:?}");
            assert_eq!(one(&m, "x", 16_400, 1, b).0, None);
        }
    }
}

#[test]
fn deep_nesting_is_bounded() {
    let m = masks();
    let mut v = bin_record(&[(25, Some(b"bob@example.com"))]);
    for _ in 0..20 {
        v = bin_record(&[(2249, Some(&v))]);
    }
    let (out, _) = one(&m, "r", 2249, 1, &v);
    // Somewhere down the chain a record became NULL; the address is gone.
    let out = out
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    assert!(!out.contains("bob@example.com"));
    let (out, _) = one(&m, "secret", 2249, 1, &v);
    let out = out
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    assert!(!out.contains("bob@example.com"));
}

// ------------------------------------------------------------ text values

#[test]
fn text_arrays_masked_whole_stay_valid_literals() {
    let m = masks();
    let t = |oid, v: &[u8]| {
        one(&m, "secret", oid, 0, v)
            .0
            .map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(
        t(1009, b"{a,\"b c\",NULL}").as_deref(),
        Some("{****,****,NULL}")
    );
    assert_eq!(t(1007, b"{1,2,3}").as_deref(), Some("{0,0,0}"));
    assert_eq!(t(1007, b"[0:1]={1,2}").as_deref(), Some("[0:1]={0,0}"));
    assert_eq!(
        t(1009, b"{{a,b},{c,d}}").as_deref(),
        Some("{{****,****},{****,****}}")
    );
    assert_eq!(
        t(199, b"{\"{\\\"a\\\":1}\"}").as_deref(),
        Some("{\"\\\"****\\\"\"}")
    );
    assert_eq!(t(1182, b"{2020-01-01}").as_deref(), Some("{NULL}"));
    assert_eq!(t(1009, b"{}").as_deref(), Some("{}"));
    // Not an array literal: NULL.
    assert_eq!(t(1009, b"{a"), None);
    assert_eq!(t(1009, b"{a}}"), None);
    // Records and unknown types masked whole: NULL.
    assert_eq!(t(2249, b"(1,a)"), None);
    assert_eq!(t(16_400, b"red"), None);
}

#[test]
fn detectors_in_text_literals_keep_them_valid() {
    let m = masks();
    let t = |name, oid, v: &[u8]| {
        one(&m, name, oid, 0, v)
            .0
            .map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(
        t("l", 1009, b"{\"a bob@example.com\",x}").as_deref(),
        Some("{\"a <masked:email>\",x}")
    );
    // A phone number with parentheses and spaces inside a quoted element.
    assert_eq!(
        t("l", 1009, b"{\"(415) 555-2671\",x}").as_deref(),
        Some("{<masked:phone>,x}")
    );
    // A private key without its END line: the finding runs to the end of
    // the element, not of the literal.
    assert_eq!(
        t("l", 1009, b"{\"-----BEGIN PRIVATE KEY-----\nMIIBVQ\",x}").as_deref(),
        Some("{<masked:private_key>,x}")
    );
    // Records, nested: the array inside the record stays an array.
    assert_eq!(
        t("r", 2249, b"(1,\"{bob@example.com,y}\",\"(415) 555-2671\")").as_deref(),
        Some("(1,\"{<masked:email>,y}\",<masked:phone>)")
    );
    // An array of records.
    assert_eq!(
        t("l", 2287, b"{\"(1,bob@example.com)\"}").as_deref(),
        Some("{\"(1,<masked:email>)\"}")
    );
    // Unknown types: citext-like free text is rewritten in place …
    assert_eq!(
        t("c", 16_400, b"mail bob@example.com").as_deref(),
        Some("mail <masked:email>")
    );
    // … but a finding that spans quotes or brackets of an unknown syntax
    // becomes NULL rather than break the literal.
    assert_eq!(t("c", 16_400, b"[(415) 555-2671]"), None);
    // hstore-like: each quoted run on its own.
    assert_eq!(
        t("c", 16_400, b"\"e\"=>\"bob@example.com\"").as_deref(),
        Some("\"e\"=>\"<masked:email>\"")
    );
    // Numbers inside number arrays are never detected.
    assert!(!one(&m, "n", 1016, 0, b"{4111111111111111}").1);
}

#[test]
fn literal_rewriters_escape_replacements() {
    let mut f = |_: &[u8]| Repl::Bytes(b"a \"q\" \\ {x},(y)".to_vec());
    let out = literal::rewrite_array(b"{v}", &mut f).unwrap();
    assert_eq!(out, b"{\"a \\\"q\\\" \\\\ {x},(y)\"}");
    let out = literal::rewrite_record(b"(v,)", &mut f).unwrap();
    assert_eq!(out, b"(\"a \"\"q\"\" \\\\ {x},(y)\",)");
    // Empty and NULL-looking replacements are quoted.
    let mut e = |_: &[u8]| Repl::Bytes(b"NULL".to_vec());
    assert_eq!(
        literal::rewrite_array(b"{v}", &mut e).unwrap(),
        b"{\"NULL\"}"
    );
    let mut e = |_: &[u8]| Repl::Bytes(Vec::new());
    assert_eq!(literal::rewrite_record(b"(v)", &mut e).unwrap(), b"(\"\")");
    // Leaves are given unescaped; NULL elements and fields are not given.
    let mut seen = Vec::new();
    let mut g = |l: &[u8]| {
        seen.push(l.to_vec());
        Repl::Keep
    };
    let out = literal::rewrite_array(b" { \"a\\\"b\" , c d ,NULL,\"NULL\"} ", &mut g).unwrap();
    assert_eq!(out, b" { \"a\\\"b\" , c d ,NULL,\"NULL\"} ");
    assert_eq!(
        seen,
        vec![b"a\"b".to_vec(), b"c d".to_vec(), b"NULL".to_vec()]
    );
    seen.clear();
    let mut g = |l: &[u8]| {
        seen.push(l.to_vec());
        Repl::Keep
    };
    literal::rewrite_record(b"(,\"a\"\"b\",c\\,d,\"\")", &mut g).unwrap();
    assert_eq!(seen, vec![b"a\"b".to_vec(), b"c,d".to_vec(), Vec::new()]);
    // Malformed literals.
    let mut k = |_: &[u8]| Repl::Keep;
    for bad in [
        &b"{"[..],
        b"{a,}",
        b"{,a}",
        b"{\"a}",
        b"{a\"b\"}",
        b"x{a}",
        b"{{{{{{{a}}}}}}}",
        b"[1:2]{a}",
        b"{a}x",
    ] {
        assert!(
            literal::rewrite_array(bad, &mut k).is_none(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for bad in [&b"("[..], b"(a", b"(\"a)", b"(a)x", b"a", b"(a\\"] {
        assert!(
            literal::rewrite_record(bad, &mut k).is_none(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

// ------------------------------------------------------------ property-style

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        let alphabet: &[u8] = b"{}()\",\\ x@.com4111NUL\x00\x01\xff-0123456789[]:=";
        (0..n)
            .map(|_| {
                if self.below(3) == 0 {
                    self.next() as u8
                } else {
                    alphabet[self.below(alphabet.len())]
                }
            })
            .collect()
    }
}

/// Random values, some shaped like arrays and records, of every class, in
/// both formats and both modes: no panic, every row well-formed, and the
/// invariants hold (a masked value never leaves unchanged; no value leaves
/// with a finding in it).
#[test]
fn random_values_never_panic_and_never_leak() {
    let m = all_detectors_and_columns();
    let oids = [
        25, 18, 114, 3802, 23, 20, 1700, 17, 1082, 1009, 1007, 199, 3807, 2249, 2287, 16_400, 0,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let mut firing = 0;
    for round in 0..4000 {
        let oid = oids[round % oids.len()];
        let fmt = (round / oids.len() % 2) as i16;
        let raw = match rng.below(4) {
            0 => rng.bytes(64),
            1 => {
                let e: Vec<Vec<u8>> = (0..rng.below(4)).map(|_| rng.bytes(20)).collect();
                let refs: Vec<Option<&[u8]>> = e.iter().map(|x| Some(&x[..])).collect();
                let elem = oids[rng.below(oids.len())];
                bin_array(elem, &[(refs.len() as i32, 1)], &refs)
            }
            2 => {
                let e: Vec<(u32, Vec<u8>)> = (0..rng.below(4))
                    .map(|_| (oids[rng.below(oids.len())], rng.bytes(20)))
                    .collect();
                let refs: Vec<(u32, Option<&[u8]>)> =
                    e.iter().map(|(o, x)| (*o, Some(&x[..]))).collect();
                bin_record(&refs)
            }
            _ => {
                let mut v = b"{".to_vec();
                v.extend(rng.bytes(30));
                v.extend_from_slice(b" bob@example.com,");
                v.extend(rng.bytes(10));
                v.push(b'}');
                v
            }
        };
        // Random corruption of a structured value.
        let mut v = raw;
        if !v.is_empty() && rng.below(3) == 0 {
            let i = rng.below(v.len());
            v[i] = rng.next() as u8;
        }
        if value::fires(&m, &v) {
            firing += 1;
        }
        for name in ["secret", "plain"] {
            let plan = RowPlan::new(&row_desc(&[(name, oid, fmt)]), &m, &[]).unwrap();
            let changed = plan.mask_row(&m, &data_row(&[Some(&v)]), &mut out).unwrap();
            let got = if changed {
                values(&out).remove(0)
            } else {
                Some(v.clone())
            };
            if name == "secret" {
                assert!(
                    got.as_deref() != Some(&v[..]) || no_data(&v),
                    "masked value left unchanged: oid {oid} fmt {fmt} {v:?}"
                );
            }
            if let Some(g) = &got
                && plan.columns()[0] != Col::Pass
            {
                assert!(
                    !value::fires(&m, g),
                    "finding left in: oid {oid} fmt {fmt} {v:?} -> {g:?}"
                );
            }
        }
    }
    assert!(firing > 500, "the values exercise the detectors: {firing}");
}

/// A value with nothing in it to mask: `{}`, a binary array without
/// elements, a binary record without fields.
fn no_data(v: &[u8]) -> bool {
    v == b"{}" || v == [0, 0, 0, 0] || dims_only(v)
}

fn dims_only(v: &[u8]) -> bool {
    let mut c = codec::Cursor::new(v, "t");
    let (Ok(ndim), Ok(_), Ok(_)) = (c.i32(), c.i32(), c.i32()) else {
        return false;
    };
    (0..ndim).all(|_| c.i32().is_ok() && c.i32().is_ok()) && c.is_empty()
}

fn all_detectors_and_columns() -> ActiveMasks {
    let p = Policy::parse(
        "[[mask]]\ndetectors = [\"credit_card\", \"email\", \"us_ssn\", \"iban\", \"phone\", \"aws_access_key\", \"private_key\", \"jwt\"]\ncolumns = [\"secret\"]\n",
        "policy.toml",
    )
    .unwrap();
    let t = policy::Target {
        protocol: policy::Protocol::Postgres,
        addr: "127.0.0.1".parse().unwrap(),
        port: 5432,
        host: None,
        database: None,
        user: None,
    };
    p.masker().for_context(&policy::Workload::default(), &t)
}

// ------------------------------------------------------------ server texts

#[test]
fn server_texts_are_masked() {
    let m = masks();
    let e = codec::error_response("ERROR", "23505", "duplicate key: card 4111111111111111");
    let (f, _) = codec::split_frame(&e, 1 << 20).unwrap().unwrap();
    let new = mask_error(&m, b'E', f.body).unwrap().unwrap();
    let (f, _) = codec::split_frame(&new, 1 << 20).unwrap().unwrap();
    let fields = codec::error_fields(f.body).unwrap();
    assert_eq!(
        codec::error_field(&fields, b'M').as_deref(),
        Some("duplicate key: card <masked:credit_card>")
    );
    assert_eq!(codec::error_field(&fields, b'C').as_deref(), Some("23505"));
    let row = mask_copy_row(&m, b"1\tbob@example.com\t4111111111111111\n").unwrap();
    let (f, _) = codec::split_frame(&row, 1 << 20).unwrap().unwrap();
    assert_eq!(f.body, b"1\t<masked:email>\t<masked:credit_card>\n");
    assert!(mask_copy_row(&m, b"1\tnothing\n").is_none());
}

fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.push(*k);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

#[test]
fn withheld_errors_keep_only_severity_and_sqlstate() {
    let body = error_body(&[
        (b'S', "ОШИБКА"),
        (b'V', "ERROR"),
        (b'C', "23505"),
        (b'M', "duplicate key value (password)=(hunter2)"),
        (b'D', "Key (password)=(hunter2) already exists."),
        (b'H', "hint hunter2"),
        (b'W', "SQL function"),
        (b'q', "SELECT 'hunter2'"),
        (b'P', "12"),
        (b'p', "3"),
        (b'c', "password"),
        (b't', "users"),
    ]);
    let out = withhold_error(
        b'E',
        &body,
        "the statement reads masked columns (session 7)",
    );
    let (f, n) = codec::split_frame(&out, 1 << 20).unwrap().unwrap();
    assert_eq!((f.tag, n), (b'E', out.len()));
    let fields = codec::error_fields(f.body).unwrap();
    let codes: Vec<u8> = fields.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, b"SVCM");
    assert_eq!(codec::error_field(&fields, b'S').as_deref(), Some("ERROR"));
    assert_eq!(codec::error_field(&fields, b'C').as_deref(), Some("23505"));
    let msg = codec::error_field(&fields, b'M').unwrap();
    assert!(msg.starts_with("interceptor: the server's message was withheld because the statement reads masked columns (session 7)"), "{msg}");
    assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
    // A notice; no V; a bogus SQLSTATE and severity.
    let body = error_body(&[(b'S', "hunter2"), (b'C', "hunter2"), (b'M', "x")]);
    let out = withhold_error(b'N', &body, "r");
    let (f, _) = codec::split_frame(&out, 1 << 20).unwrap().unwrap();
    assert_eq!(f.tag, b'N');
    let fields = codec::error_fields(f.body).unwrap();
    assert_eq!(codec::error_field(&fields, b'S').as_deref(), Some("NOTICE"));
    assert_eq!(codec::error_field(&fields, b'C').as_deref(), Some("XX000"));
    // Undecodable body; a NUL in the reason.
    let out = withhold_error(b'E', b"Sx", "a\0b");
    let (f, _) = codec::split_frame(&out, 1 << 20).unwrap().unwrap();
    let fields = codec::error_fields(f.body).unwrap();
    assert_eq!(codec::error_field(&fields, b'S').as_deref(), Some("ERROR"));
    assert!(codec::error_field(&fields, b'M').unwrap().contains("a b"));
}

// ------------------------------------------------------------ COPY

fn copy_response(ncols: usize) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&(ncols as i16).to_be_bytes());
    for _ in 0..ncols {
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    b
}

/// The bodies of the CopyData messages in `out`.
fn copy_rows(out: &CopyOut, original: &[u8]) -> Vec<Vec<u8>> {
    match out {
        CopyOut::Forward => vec![original.to_vec()],
        CopyOut::Replace(b) => {
            let mut rows = Vec::new();
            let mut rest = &b[..];
            while !rest.is_empty() {
                let (f, n) = codec::split_frame(rest, 1 << 30).unwrap().unwrap();
                assert_eq!(f.tag, b'd');
                rows.push(f.body.to_vec());
                rest = &rest[n..];
            }
            rows
        }
    }
}

fn copy_all(plan: &mut CopyPlan, m: &ActiveMasks, msgs: &[&[u8]]) -> Vec<u8> {
    let mut all = Vec::new();
    for d in msgs {
        let out = plan.mask_copy_data(m, d).unwrap();
        for r in copy_rows(&out, d) {
            all.extend(r);
        }
    }
    if let Some(last) = plan.finish(m).unwrap() {
        let (f, _) = codec::split_frame(&last, 1 << 30).unwrap().unwrap();
        all.extend_from_slice(f.body);
    }
    all
}

#[test]
fn copy_text_rows_are_masked_by_column_and_detector() {
    let m = masks();
    let mut plan = CopyPlan::new(CopyFormat::text(), vec![false, true], &copy_response(3)).unwrap();
    // Unchanged rows are forwarded as they are.
    assert_eq!(
        plan.mask_copy_data(&m, b"1\t\\N\tx\n").unwrap(),
        CopyOut::Forward
    );
    let out = plan
        .mask_copy_data(&m, b"2\thunter2\tmail bob@example.com\\tend\n")
        .unwrap();
    assert_eq!(
        copy_rows(&out, b""),
        vec![b"2\t****\tmail <masked:email>\\tend\n".to_vec()]
    );
    // Escapes are decoded before detection and written back.
    let out = plan
        .mask_copy_data(&m, b"3\t\\x41\tbob\\100example.com\n")
        .unwrap();
    assert_eq!(
        copy_rows(&out, b""),
        vec![b"3\t****\t<masked:email>\n".to_vec()]
    );
    // A wrong number of fields is an error.
    assert!(plan.mask_copy_data(&m, b"1\t2\n").is_err());
    // A delimiter that occurs in `****` is escaped.
    let f = copy_options("(DELIMITER '*')", true).unwrap();
    let mut plan = CopyPlan::new(f, vec![true, false], &copy_response(2)).unwrap();
    let out = plan.mask_copy_data(&m, b"a\\*b*c\n").unwrap();
    assert_eq!(copy_rows(&out, b""), vec![b"\\*\\*\\*\\**c\n".to_vec()]);
}

#[test]
fn copy_csv_rows_with_quotes_newlines_and_splits() {
    let m = masks();
    let mut plan = CopyPlan::new(CopyFormat::csv(), vec![true, false], &copy_response(2)).unwrap();
    let all = copy_all(
        &mut plan,
        &m,
        &[
            b"\"a,\nb\",\"x \"\"q\"\" bob@example.com\"\n",
            b",\"\"\n",
            // One row across three messages, the split inside quotes.
            b"\"sec",
            b"ret\nline\",\"4111 1111",
            b" 1111 1111\"\n",
        ],
    );
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "\"****\",\"x \"\"q\"\" <masked:email>\"\n,\"\"\n\"****\",\"<masked:credit_card>\"\n"
    );
    // A partial row is held back: nothing is sent for it yet.
    let mut plan = CopyPlan::new(CopyFormat::csv(), vec![], &copy_response(2)).unwrap();
    assert_eq!(
        plan.mask_copy_data(&m, b"\"bob@exa").unwrap(),
        CopyOut::Replace(Vec::new())
    );
    let out = plan.mask_copy_data(&m, b"mple.com\",1\n").unwrap();
    assert_eq!(
        copy_rows(&out, b""),
        vec![b"\"<masked:email>\",1\n".to_vec()]
    );
    // Data that ends inside quotes is an error at CopyDone; a last row
    // without its newline is masked.
    assert_eq!(
        plan.mask_copy_data(&m, b"\"open").unwrap(),
        CopyOut::Replace(Vec::new())
    );
    assert!(plan.finish(&m).is_err());
    let mut plan = CopyPlan::new(CopyFormat::csv(), vec![true], &copy_response(1)).unwrap();
    assert_eq!(copy_all(&mut plan, &m, &[b"last"]), b"\"****\"");
    // Held back rows are bounded.
    let mut plan = CopyPlan::new(CopyFormat::csv(), vec![], &copy_response(1))
        .unwrap()
        .with_max_pending(8);
    assert!(plan.mask_copy_data(&m, b"\"0123456789").is_err());
}

#[test]
fn copy_csv_with_another_escape_and_null_string() {
    let m = masks();
    let f = copy_options(
        "WITH (FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'NIL', DELIMITER ';')",
        true,
    )
    .unwrap();
    assert_eq!(
        f,
        CopyFormat::Csv {
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"NIL".to_vec()
        }
    );
    let mut plan = CopyPlan::new(f, vec![false, true, false], &copy_response(3)).unwrap();
    let all = copy_all(
        &mut plan,
        &m,
        &[b"'it\\'s bob@example.com';NIL;'NIL'\n", b"x;'a\\\\';y\n"],
    );
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "'it\\'s <masked:email>';NIL;'NIL'\nx;'****';y\n"
    );
}

#[test]
fn binary_copy_is_refused() {
    let m = masks();
    assert!(binary_copy_refused(&m, &CopyFormat::Binary));
    assert!(!binary_copy_refused(
        &ActiveMasks::default(),
        &CopyFormat::Binary
    ));
    assert!(!binary_copy_refused(&m, &CopyFormat::text()));
    assert!(BINARY_COPY_REFUSED.contains("FORMAT csv"));
    // The server answering in binary where text was expected, and the reverse.
    let mut bin = copy_response(1);
    bin[0] = 1;
    assert!(CopyPlan::new(CopyFormat::text(), vec![], &bin).is_err());
    assert!(CopyPlan::new(CopyFormat::Binary, vec![], &copy_response(1)).is_err());
    assert!(CopyPlan::new(CopyFormat::text(), vec![], &[0, 0, 2, 0, 0]).is_err());
}

#[test]
fn copy_options_in_both_syntaxes() {
    let ok = |s: &str| copy_options(s, true).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok(""), CopyFormat::text());
    assert_eq!(ok(";"), CopyFormat::text());
    assert_eq!(ok("(FORMAT csv)"), CopyFormat::csv());
    assert_eq!(ok("WITH (FORMAT 'csv', HEADER true)"), CopyFormat::csv());
    assert_eq!(ok("(format binary)"), CopyFormat::Binary);
    assert_eq!(ok("BINARY"), CopyFormat::Binary);
    assert_eq!(ok("WITH CSV HEADER"), CopyFormat::csv());
    assert_eq!(
        ok("CSV DELIMITER AS '|' QUOTE '\"' ESCAPE AS '\\' FORCE QUOTE *"),
        CopyFormat::Csv {
            delimiter: b'|',
            quote: b'"',
            escape: b'\\',
            null: vec![]
        }
    );
    assert_eq!(
        ok("csv force quote a, b null as 'x'"),
        CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: b"x".to_vec()
        }
    );
    assert_eq!(
        ok("(DELIMITER E'\\t', NULL '') -- trailing\n"),
        CopyFormat::Text {
            delimiter: b'\t',
            null: vec![]
        }
    );
    assert_eq!(
        ok("/* a /* nested */ comment */ (FORMAT text, FORCE_QUOTE (a, b), ENCODING 'UTF8')"),
        CopyFormat::text()
    );
    // standard_conforming_strings off: a backslash in '…' escapes.
    assert_eq!(
        copy_options("(DELIMITER '\\t')", false).unwrap(),
        CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec()
        }
    );
    assert!(
        copy_options("(DELIMITER '\\t')", true).is_err(),
        "two bytes"
    );
    for bad in [
        "(FORMAT xml)",
        "(FORMAT csv, FORMAT text)",
        "(DELIMITER ',,')",
        "(DELIMITER $$,$$)",
        "(DELIMITER U&'\\002C')",
        "(DELIMITER E'\\u002C')",
        "(FORMAT csv, QUOTE ',')",
        "(QUOTE '\"')",
        "(ENCODING 'SJIS')",
        "(FORMAT binary, DELIMITER ',')",
        "(NULL 'a\tb')",
        "(DELIMITER 'x' 'y')",
        "(FORMAT csv",
        "WITH CSV HEADER garbage",
        "(BOGUS 1)",
        "(DELIMITER '",
        "/* open",
        "CSV; SELECT 1",
    ] {
        assert!(copy_options(bad, true).is_err(), "{bad}");
    }
}

#[test]
fn copy_statement_formats() {
    let ok = |s: &str| copy_statement_format(s, true).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok("COPY users TO STDOUT"), CopyFormat::text());
    assert_eq!(
        ok("copy public.users (a, \"B\") to stdout with csv;"),
        CopyFormat::csv()
    );
    assert_eq!(ok("COPY BINARY users TO STDOUT"), CopyFormat::Binary);
    assert_eq!(
        ok("COPY users TO STDOUT USING DELIMITERS '|'"),
        CopyFormat::Text {
            delimiter: b'|',
            null: b"\\N".to_vec()
        }
    );
    assert_eq!(
        ok("COPY users TO STDOUT DELIMITERS ';' WITH CSV"),
        CopyFormat::Csv {
            delimiter: b';',
            quote: b'"',
            escape: b'"',
            null: vec![]
        }
    );
    // `TO STDOUT` and parentheses inside the query are the query's.
    assert_eq!(
        ok(
            "COPY (SELECT ')) TO STDOUT (FORMAT binary)', $x$ TO STDOUT $x$, a::text || b, $1 \
            FROM t WHERE x <> 'y' /* ) TO STDOUT */) TO STDOUT (FORMAT csv, DELIMITER E'\\t')"
        ),
        CopyFormat::Csv {
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            null: vec![]
        }
    );
    assert_eq!(
        ok("COPY (SELECT 'ü', X'ff', größe FROM t) TO STDOUT"),
        CopyFormat::text()
    );
    for bad in [
        "COPY users FROM STDIN",
        "COPY users TO '/tmp/x'",
        "COPY users TO PROGRAM 'cat'",
        "SELECT 1",
        "COPY BINARY users TO STDOUT (FORMAT csv)",
        "COPY (SELECT 1 TO STDOUT",
        "COPY (SELECT $x$ 1) TO STDOUT",
        "COPY (SELECT U&'\\0041') TO STDOUT",
        "COPY users TO STDOUT USING ','",
    ] {
        assert!(copy_statement_format(bad, true).is_err(), "{bad}");
    }
}

#[test]
fn copy_response_decoder() {
    assert_eq!(
        codec::copy_response(&copy_response(2)).unwrap(),
        (0, vec![0, 0])
    );
    assert!(codec::copy_response(&[2, 0, 0]).is_err());
    assert!(codec::copy_response(&[0, 0, 1]).is_err());
    assert!(codec::copy_response(&[0, 0xff, 0xff]).is_err());
    assert!(codec::copy_response(&[0, 0x7f, 0xff, 0, 0]).is_err());
    assert!(codec::copy_response(&[1, 0, 1, 0, 1]).is_ok());
}

/// Random bytes through every COPY format: no panic; whatever is sent is
/// whole CopyData messages.
#[test]
fn random_copy_data_never_panics() {
    let m = all_detectors_and_columns();
    let mut rng = Rng(7);
    let formats = [
        CopyFormat::text(),
        CopyFormat::csv(),
        CopyFormat::Csv {
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"N".to_vec(),
        },
    ];
    for round in 0..3000 {
        let f = formats[round % formats.len()].clone();
        let mut plan = CopyPlan::new(
            f,
            vec![rng.below(2) == 0, false],
            &copy_response(1 + rng.below(3)),
        )
        .unwrap()
        .with_max_pending(256);
        for _ in 0..4 {
            let mut d = rng.bytes(40);
            if rng.below(2) == 0 {
                d.push(b'\n');
            }
            match plan.mask_copy_data(&m, &d) {
                Ok(out) => {
                    copy_rows(&out, &d);
                }
                Err(_) => break,
            }
        }
        let _ = plan.finish(&m);
    }
}
