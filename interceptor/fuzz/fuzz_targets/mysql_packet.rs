#![no_main]
// Placeholder until the protocol module's decoder exists.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
