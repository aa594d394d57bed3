#![no_main]
//! Feeds arbitrary bytes to the MySQL packet decoder and to every message
//! parser and row rewriter the proxy runs on network input: none may
//! panic, and whatever is framed must decode back to the same payload.

use interceptor::proxy::mysql::codec::{self, ColumnPlan, ValueKind, caps, types};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let masks = codec::all_detectors();
    let none = codec::no_masks();
    let mut out = Vec::new();

    // Framing: reassemble messages until the input runs out.
    let mut seq = selector & 0x03;
    let mut pos = 0;
    let mut msg = Vec::new();
    while let Ok(Some(n)) = codec::decode_message(&rest[pos..], &mut seq, 1 << 20, &mut msg) {
        pos += n;
        let mut s = 0;
        let mut framed = Vec::new();
        codec::encode_message(&msg, &mut s, &mut framed);
        let mut s = 0;
        let mut back = Vec::new();
        assert_eq!(
            codec::decode_message(&framed, &mut s, usize::MAX, &mut back),
            Ok(Some(framed.len()))
        );
        assert_eq!(back, msg);
    }

    // Messages.
    if let Ok(g) = codec::parse_greeting(rest) {
        let patched = codec::patch_greeting(rest, &g, caps::SUPPORTED | caps::SSL, 0);
        let g2 = codec::parse_greeting(&patched).expect("a patched greeting parses");
        assert_eq!(g2.server_version, g.server_version);
    }
    if let Ok(r) = codec::parse_handshake_response(rest) {
        let patched = codec::patch_handshake_response(rest, r.capabilities & caps::SUPPORTED);
        assert!(codec::parse_handshake_response(&patched).is_ok());
    }
    let _ = codec::is_ssl_request(rest);
    let _ = codec::parse_ok(rest);
    let _ = codec::parse_err(rest);
    let _ = codec::parse_column_def(rest);
    let _ = codec::parse_prepare_ok(rest);
    let _ = codec::parse_change_user(rest, u32::from(selector) << 8 | caps::SECURE_CONNECTION);
    let _ = codec::terminator_status(rest, selector & 1 == 0);
    let _ = codec::is_terminator(rest, selector & 1 == 0);

    // Rows: the column layout comes from the input's first bytes.
    let ncols = usize::from(selector >> 4) + 1;
    if rest.len() > ncols {
        let (layout, row) = rest.split_at(ncols);
        let kinds = [
            types::VAR_STRING,
            types::LONGLONG,
            types::DATE,
            types::BLOB,
            types::DOUBLE,
            types::NEWDECIMAL,
            types::TINY,
            types::JSON,
        ];
        let plans: Vec<ColumnPlan> = layout
            .iter()
            .map(|&b| {
                let column_type = kinds[usize::from(b & 7)];
                ColumnPlan {
                    column_type,
                    kind: codec::value_kind(column_type, if b & 8 != 0 { 63 } else { 45 }),
                    masked: b & 16 != 0,
                    withheld: b & 32 != 0,
                }
            })
            .collect();
        if let Ok(changed) = codec::mask_text_row(row, &plans, &masks, &mut out) {
            assert!(changed || out == row);
            // A rewritten row is a well-formed row of the same columns.
            let mut again = Vec::new();
            let copy = out.clone();
            assert!(codec::mask_text_row(&copy, &plans, &none, &mut again).is_ok());
        }
        if let Ok(changed) = codec::mask_binary_row(row, &plans, &masks, &mut out) {
            assert!(changed || out == row);
            let mut again = Vec::new();
            let copy = out.clone();
            assert!(codec::mask_binary_row(&copy, &plans, &none, &mut again).is_ok());
        }
        let _ = plans.iter().any(|p| p.kind == ValueKind::Text);
        let mut bound = Vec::new();
        let _ = codec::parse_execute(row, ncols, &mut bound, &[false; 16][..ncols]);
    }
});
