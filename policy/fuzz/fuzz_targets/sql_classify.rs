//! `sql::classify` and `sql::shape` on arbitrary input, both dialects:
//! never panic; statement texts are slices of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::sql::{Dialect, classify, shape};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        if let Ok(stmts) = classify(text, dialect) {
            for s in &stmts {
                assert!(!s.kinds.is_empty());
                let (mut o, mut a) = (s.objects.clone(), s.actions.clone());
                o.sort();
                o.dedup();
                a.sort();
                a.dedup();
                assert_eq!((o.len(), a.len()), (s.objects.len(), s.actions.len()));
                assert!(
                    text.contains(s.text.as_str()),
                    "text {:?} not in input",
                    s.text
                );
            }
        }
        let _ = shape(text, dialect);
    }
});
