//! The interceptor policy engine.
//!
//! Pure library: no I/O, no clock, no async. The daemon reads the policy
//! file and hands its text to [`Policy::parse`]; protocol sessions call
//! [`Policy::decide`] once per command, classify SQL with [`sql::classify`]
//! and mask results with the [`mask::ActiveMasks`] from
//! [`Policy::masker`]. The policy file format is documented in this crate's
//! `README.md`.

mod compile;
mod config;
pub mod error;
pub mod glob;
pub mod mask;
mod matcher;
pub mod model;
mod policy;
pub mod sql;

pub use error::PolicyError;
pub use mask::{ActiveMasks, CellKind, Detector, DetectorSet, MaskRule, Masker};
pub use model::{
    Decision, Defaults, Egress, EgressAllow, Identity, InterceptRule, Operation, Protocol, Target,
    Verdict, Workload,
};
pub use policy::{Policy, Rule};
pub use sql::{Dialect, SqlError, SqlStatement, StatementKind};

/// Re-exported so callers can name the network type of
/// [`InterceptRule::net`] and [`EgressAllow::net`].
pub use ipnet::IpNet;

#[cfg(test)]
mod tests;
