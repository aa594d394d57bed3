#![no_main]
//! Arbitrary bytes as a client would send them: a start-up packet, then
//! framed messages. The decoders must never panic, whatever they get.

use interceptor::proxy::postgres::codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first packet of a connection.
    if data.len() >= 4 {
        let hdr = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = codec::startup_len(hdr)
            && let Some(body) = data.get(4..len)
            && let Ok(s) = codec::decode_startup(body)
        {
            let _ = s.param("user");
        }
    }
    // Then messages, as the session loop splits and decodes them.
    let mut rest = data;
    while let Ok(Some((frame, n))) = codec::split_frame(rest, 1 << 20) {
        if let Ok(codec::Frontend::Password) = codec::decode_frontend(frame) {
            let _ = codec::decode_sasl_initial(frame.body);
        }
        rest = &rest[n..];
    }
});
