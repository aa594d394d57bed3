//! The fuzz smoke pass of `cargo xtask test`: every cargo-fuzz target for a
//! few seconds. The decoders and parsers must survive arbitrary input; a
//! crash fails the run. The smoke pass builds without AddressSanitizer and
//! without optimisation (`--dev -s none`: the code under test is safe Rust,
//! and an instrumented release build of the whole dependency tree would
//! take a quarter of the CI budget). Longer runs by hand, with the
//! sanitizer: `cargo +nightly fuzz run TARGET` in `interceptor/` or
//! `policy/`.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::run;

/// Flags shared by the build and the runs, so a run does not rebuild.
const FLAGS: [&str; 3] = ["--dev", "-s", "none"];

/// Seconds each target runs in the smoke pass.
pub const SMOKE_SECS: u32 = 20;

pub const TARGETS: [(&str, &[&str]); 2] = [
    (
        "interceptor",
        &["pg_frontend", "pg_backend", "pg_mask", "mysql_packet"],
    ),
    (
        "policy",
        &["policy_parse", "sql_classify", "sql_split", "mask_text"],
    ),
];

pub fn smoke(root: &Path, secs: u32) -> Result<()> {
    for (krate, targets) in TARGETS {
        let dir = root.join(krate);
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "build"])
            .args(FLAGS)
            .current_dir(&dir))?;
        for t in targets {
            run(Command::new("cargo")
                .args(["+nightly", "fuzz", "run"])
                .args(FLAGS)
                .args([t, "--"])
                .arg(format!("-max_total_time={secs}"))
                .arg("-rss_limit_mb=4096")
                .current_dir(&dir))?;
        }
    }
    Ok(())
}
