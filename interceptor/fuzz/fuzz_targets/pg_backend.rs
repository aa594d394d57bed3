#![no_main]
//! Arbitrary bytes as a server would send them: framed messages, decoded
//! as the session loop does, RowDescriptions turned into masking plans and
//! DataRows masked under them. Nothing may panic, and a rewritten DataRow
//! must stay a well-formed message.

use interceptor::proxy::postgres::{codec, mask};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let masks = mask::all_detectors();
    let mut plan = mask::RowPlan::blind(&masks);
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Some((frame, n))) = codec::split_frame(rest, 1 << 20) {
        let _ = codec::check_backend(frame);
        match frame.tag {
            b'T' => {
                if let Ok(p) = mask::RowPlan::new(frame.body, &masks, &[]) {
                    plan = p;
                }
            }
            b'D' => {
                if let Ok(true) = plan.mask_row(&masks, frame.body, &mut out) {
                    let (f, m) = codec::split_frame(&out, u32::MAX >> 1)
                        .expect("a masked row is framed")
                        .expect("a masked row is complete");
                    assert_eq!(m, out.len());
                    codec::check_backend(f).expect("a masked row decodes");
                }
            }
            b'E' | b'N' => {
                let _ = mask::mask_error(&masks, frame.tag, frame.body);
            }
            b'A' => {
                let _ = mask::mask_notification(&masks, frame.body);
            }
            b'd' => {
                let _ = mask::mask_copy_row(&masks, frame.body);
            }
            _ => {}
        }
        rest = &rest[n..];
    }
});
