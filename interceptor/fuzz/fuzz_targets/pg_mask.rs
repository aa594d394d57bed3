#![no_main]
//! Random result descriptions (built-in and unknown type OIDs, text and
//! binary format, columns forced masked or not) and random values under
//! them, then random COPY data under random COPY options (and random COPY
//! statements through their parser). Nothing may panic; a rewritten
//! DataRow must be a well-formed message with as many values as before;
//! no value of a masked or detected column may leave with a detector
//! finding in it; masked COPY data must be whole CopyData messages.

use interceptor::proxy::postgres::{codec, mask};

const OIDS: [u32; 24] = [
    16, 17, 18, 19, 20, 21, 23, 25, 114, 142, 700, 701, 1043, 1082, 1700, 3802, // scalars
    1000, 1001, 1007, 1009, 3807, 2287,   // arrays
    2249,   // record
    16_400, // unknown (enum, composite, extension type)
];

fn desc(spec: &[u8]) -> (Vec<u8>, Vec<bool>) {
    let mut b = Vec::new();
    let mut forced = Vec::new();
    b.extend_from_slice(&((spec.len() / 2) as i16).to_be_bytes());
    for c in spec.chunks_exact(2) {
        b.extend_from_slice(b"c\0");
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&OIDS[c[0] as usize % OIDS.len()].to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&i16::from(c[1] & 1).to_be_bytes());
        forced.push(c[1] & 2 != 0);
    }
    (b, forced)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let masks = mask::all_detectors();
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    if head & 0x80 != 0 {
        copy(head, rest);
        return;
    }
    let ncols = (head % 6) as usize + 1;
    if rest.len() < ncols * 2 {
        return;
    }
    let (spec, values) = rest.split_at(ncols * 2);
    let (d, forced) = desc(spec);
    let plan = mask::RowPlan::new(&d, &masks, &forced).expect("a well-formed description");
    // Values separated by 0xfe; 0xfd alone is NULL.
    let mut row = Vec::new();
    row.extend_from_slice(&(ncols as i16).to_be_bytes());
    let mut parts = values.split(|b| *b == 0xfe);
    for _ in 0..ncols {
        match parts.next() {
            Some([0xfd]) => row.extend_from_slice(&(-1i32).to_be_bytes()),
            p => {
                let v = p.unwrap_or_default();
                row.extend_from_slice(&(v.len() as i32).to_be_bytes());
                row.extend_from_slice(v);
            }
        }
    }
    let mut out = Vec::new();
    let Ok(changed) = plan.mask_row(&masks, &row, &mut out) else {
        panic!("a well-formed DataRow is masked");
    };
    let body = if changed {
        let (f, n) = codec::split_frame(&out, u32::MAX >> 1)
            .expect("a masked row is framed")
            .expect("a masked row is complete");
        assert_eq!(n, out.len());
        codec::check_backend(f).expect("a masked row decodes");
        f.body
    } else {
        &row[..]
    };
    let mut it = codec::DataRowIter::new(body).expect("a row");
    assert_eq!(it.len(), ncols);
    let mut i = 0;
    while let Some(v) = it.next().expect("a value") {
        if let Some(v) = v
            && plan.columns()[i] != mask::Col::Pass
        {
            assert!(
                masks
                    .detectors_fired(&String::from_utf8_lossy(v))
                    .is_empty(),
                "a finding left in column {i}: {v:?}"
            );
        }
        i += 1;
    }
});

fn copy(head: u8, rest: &[u8]) {
    let masks = &mask::all_detectors();
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (opts, data) = rest.split_at(split);
    let opts = String::from_utf8_lossy(opts);
    let _ = mask::copy_statement_format(&opts, head & 1 != 0);
    let Ok(format) = mask::copy_options(&opts, head & 1 != 0) else {
        return;
    };
    let ncols = (head >> 1 & 3) as i16 + 1;
    let mut resp = vec![0u8];
    resp.extend_from_slice(&ncols.to_be_bytes());
    for _ in 0..ncols {
        resp.extend_from_slice(&0i16.to_be_bytes());
    }
    let Ok(plan) = mask::CopyPlan::new(format, vec![head & 8 != 0, head & 16 != 0], &resp) else {
        return;
    };
    let mut plan = plan.with_max_pending(1 << 12);
    // Messages separated by 0xfe.
    for d in data.split(|b| *b == 0xfe) {
        match plan.mask_copy_data(masks, d) {
            Ok(mask::CopyOut::Forward) => {}
            Ok(mask::CopyOut::Replace(mut b)) => {
                while let Ok(Some((f, n))) = codec::split_frame(&b, u32::MAX >> 1) {
                    assert_eq!(f.tag, b'd');
                    b.drain(..n);
                }
                assert!(b.is_empty(), "whole CopyData messages");
            }
            Err(_) => return,
        }
    }
    let _ = plan.finish(masks);
}
