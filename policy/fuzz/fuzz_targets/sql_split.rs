//! The server-faithful split under random session settings: never panics;
//! statement texts are in-order, non-overlapping slices of the decoded
//! input; text that reads the same under every setting (ASCII, no
//! backslash, no MySQL `"` or comment) classifies the same under every
//! setting; shapes and literal masking never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::sql::lex::charset::decode;
use policy::sql::{Dialect, Encoding, Lexing, Server, classify_with, shape_with};
use policy::{ActiveMasks, DetectorSet};

const ENCODINGS: [Encoding; 9] = [
    Encoding::Utf8,
    Encoding::ShiftJis,
    Encoding::Big5,
    Encoding::Gbk,
    Encoding::Uhc,
    Encoding::Gb18030,
    Encoding::AsciiSafe(Some("windows-1252")),
    Encoding::AsciiSafe(None),
    Encoding::Unsupported,
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let dialect = if flags & 1 == 0 {
        Dialect::Postgres
    } else {
        Dialect::Mysql
    };
    let server = if flags & 0x80 == 0 {
        Server::MariaDb(101106)
    } else {
        Server::MySql(80036)
    };
    let lexing = Lexing {
        dialect,
        backslash_escapes: flags & 2 != 0,
        ansi_quotes: flags & 4 != 0,
        encoding: ENCODINGS[usize::from((flags >> 3) & 0x0f) % ENCODINGS.len()],
        server,
    };
    let Ok(text) = decode(body, lexing.encoding) else {
        return;
    };
    let result = classify_with(&text, &lexing);
    if let Ok(stmts) = &result {
        let mut from = 0;
        for s in stmts {
            assert!(!s.kinds.is_empty());
            let at = text[from..]
                .find(s.text.as_str())
                .unwrap_or_else(|| panic!("statement {:?} not in order in {text:?}", s.text));
            from += at + s.text.len();
        }
    }
    if Lexing::insensitive(body, dialect) {
        let base = Lexing {
            server,
            ..Lexing::default_for(dialect)
        };
        let other = classify_with(&text, &base);
        match (&result, &other) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "settings changed the reading of {text:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("settings changed whether {text:?} parses: {result:?} / {other:?}"),
        }
    }
    let _ = shape_with(&text, &lexing);
    let _ = ActiveMasks::with_detectors(DetectorSet::all()).mask_sql(&text, &lexing);
});
