//! Detectors on arbitrary text: never panic; unchanged text is borrowed;
//! masking is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::mask::{ActiveMasks, CellKind, DetectorSet};
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let masks = ActiveMasks::with_detectors(DetectorSet::all());
    let (out, fired) = masks.mask_text_fired(text);
    match &out {
        Cow::Borrowed(_) => assert!(fired.is_empty()),
        Cow::Owned(s) => {
            assert!(!fired.is_empty());
            assert!(s.contains("<masked:"));
            // Masked output has nothing left to mask.
            assert!(matches!(masks.mask_text(s), Cow::Borrowed(_)), "{s:?}");
        }
    }
    assert_eq!(masks.detectors_fired(text), fired);
    let _ = masks.mask_cell(false, CellKind::Text, text);
});
