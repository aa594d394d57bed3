//! The interceptor policy engine.
//!
//! Pure library: no I/O, no clock, no async. The daemon reads the policy
//! file and hands its text to [`Policy::parse`]; protocol sessions call
//! [`Policy::decide`] once per command, classify SQL with [`sql::classify`]
//! and mask results with the [`mask::ActiveMasks`] from
//! [`Policy::masker`]. The policy file format is documented in this crate's
//! `README.md`.
//!
//! ```
//! use policy::sql::{classify, Dialect};
//! use policy::{Operation, Policy, Protocol, Target, Verdict, Workload};
//!
//! let policy = Policy::parse(
//!     r#"
//! [[rule]]
//! name = "no-destructive-ddl"
//! decision = "deny"
//! match = { protocol = "postgres", sql.statement = ["drop", "truncate"] }
//!
//! [[mask]]
//! detectors = ["email"]
//! "#,
//!     "policy.toml",
//! )?;
//!
//! let workload = Workload { cgroup: "/system.slice/ci.service".into(), ..Workload::default() };
//! let target = Target {
//!     protocol: Protocol::Postgres,
//!     addr: "10.0.0.5".parse()?,
//!     port: 5432,
//!     host: None,
//!     database: Some("app".into()),
//!     user: Some("ci".into()),
//! };
//!
//! // One decision per statement of a multi-statement query string.
//! let verdicts: Vec<Verdict> = classify("SELECT 1; DROP TABLE users", Dialect::Postgres)?
//!     .iter()
//!     .map(|stmt| policy.decide(&workload, &target, &Operation::Sql(stmt)).verdict)
//!     .collect();
//! assert_eq!(verdicts, [Verdict::Allow, Verdict::Deny]);
//!
//! // Masks for this connection.
//! let masks = policy.masker().for_context(&workload, &target);
//! assert_eq!(masks.mask_text("mail bob@example.com"), "mail <masked:email>");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compile;
mod config;
pub mod error;
pub mod glob;
mod limit;
pub mod mask;
mod matcher;
pub mod model;
mod policy;
pub mod sql;

pub use error::PolicyError;
pub use limit::{LimitExceeded, LimitRule, LimitUnit, ResultLimit};
pub use mask::{ActiveMasks, CellKind, Detector, DetectorSet, MaskRule, Masker};
pub use model::{
    Decision, Defaults, Egress, EgressAllow, Identity, InterceptRule, Operation, Protocol, Target,
    Verdict, Workload,
};
pub use policy::{Policy, Rule};
pub use sql::{Action, Dialect, ObjectKind, SqlError, SqlStatement, StatementKind};

/// The operation families (`sql`, `ssh`, `http`) whose protocol module
/// judges individual commands. A rule using a `match` key of any other
/// family is refused when the policy is loaded: no module would ever ask
/// about it, so it would never run. SSH and HTTP connections are relayed as
/// opaque TCP today and judged only at connect; their modules add `"ssh"`
/// and `"http"` here when they start judging commands (the matchers for
/// those keys are kept and tested).
pub const JUDGED_FAMILIES: &[&str] = &["sql"];

/// Re-exported so callers can name the network type of
/// [`InterceptRule::net`] and [`EgressAllow::net`].
pub use ipnet::IpNet;

#[cfg(test)]
mod tests;
