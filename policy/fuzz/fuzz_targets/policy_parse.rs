//! `Policy::parse` on arbitrary UTF-8: never panics; errors are located
//! inside the text; a policy that parses can decide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{Operation, Policy, Protocol, Target, Workload};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text, "fuzz.toml") {
        Ok(p) => {
            let w = Workload {
                cgroup: "/system.slice/x.service".into(),
                ..Workload::default()
            };
            for protocol in Protocol::ALL {
                let t = Target {
                    protocol,
                    addr: "10.0.0.1".parse().unwrap(),
                    port: 5432,
                    host: Some("h".into()),
                    database: Some("d".into()),
                    user: Some("u".into()),
                };
                let _ = p.decide(&w, &t, &Operation::Connect);
                let _ = p.decide(&w, &t, &Operation::SshCommand("ls -la"));
                let _ = p.decide(
                    &w,
                    &t,
                    &Operation::Http {
                        method: "GET",
                        host: "h",
                        path: "/a/../b",
                    },
                );
                let _ = p.masker().for_context(&w, &t);
                if let Some(l) = p.result_limit(&w, &t) {
                    assert!(l.rows.is_some() || l.bytes.is_some());
                    assert!(l.rows.is_none_or(|r| r > 0) && l.bytes.is_none_or(|b| b > 0));
                }
            }
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "{e} (text has {lines} lines)"
            );
            assert!(e.column >= 1);
            let _ = e.to_string();
        }
    }
});
