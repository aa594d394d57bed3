//! interceptor: a host-level, eBPF-assisted transparent interceptor that
//! puts a policy, masking, approval and recording gate in front of the
//! database, SSH and HTTP connections of processes in attached cgroups.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli`]; the modules are
//! a library so tests and fuzz targets can reach the codecs directly.

pub mod approval;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod http_client;
pub mod identity;
pub mod install;
pub mod proxy;
pub mod record;
pub mod redirect;
