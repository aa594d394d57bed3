//! The daemon configuration file (`/etc/interceptor/interceptor.toml`).
//!
//! This file says *where* things live and how the daemon runs; *what* is
//! intercepted and decided lives in the policy file it points to (see
//! `policy/README.md`). Every path can be overridden here, so tests and
//! unusual hosts never need the defaults. The reference for every key is the
//! "Configuration" section of the README; keep the two in step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/interceptor/interceptor.toml";
pub const DEFAULT_POLICY_PATH: &str = "/etc/interceptor/policy.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/interceptor";
pub const DEFAULT_DATABASE: &str = "/var/lib/interceptor/interceptor.db";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/interceptor/control.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/interceptor";
pub const DEFAULT_PROXY_PORT: u16 = 949;
/// SO_MARK put on every socket the daemon opens; the eBPF programs never
/// redirect or refuse a socket carrying it.
pub const DEFAULT_SOCKET_MARK: u32 = 0x1c7e_0001;

/// The configuration file as written by the operator.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    identity: RawIdentity,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    enroll_socket: Option<PathBuf>,
    max_token_age: Option<String>,
    #[serde(default)]
    issuer: Vec<crate::identity::token::IssuerConfig>,
}

/// Workload identity: where workloads enroll and whose tokens are accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Socket any local process may use to enroll its own cgroup (0666;
    /// it accepts nothing else).
    pub enroll_socket: PathBuf,
    pub issuers: Vec<crate::identity::token::IssuerConfig>,
    /// Oldest token (`now - iat`) accepted for enrollment; tokens without
    /// `iat` are refused.
    pub max_token_age: Duration,
}

pub const DEFAULT_ENROLL_SOCKET: &str = "/run/interceptor/enroll.sock";
pub const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_dir: Option<PathBuf>,
    upstream_verify: Option<bool>,
    upstream_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<u32>,
    max_sessions: Option<usize>,
    max_sessions_per_cgroup: Option<usize>,
    max_buffered_bytes: Option<u64>,
}

/// TLS interception settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Where the local CA lives (`ca.pem`, `ca.key`).
    pub ca_dir: PathBuf,
    /// Verify upstream server certificates (system roots + upstream_ca_file).
    pub upstream_verify: bool,
    pub upstream_ca_file: Option<PathBuf>,
}

/// Bounds on what clients and servers may send, and on what a workload
/// can make the daemon hold (see `proxy::limits`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest protocol message accepted once a session has authenticated
    /// (a longer length field ends the session). Before authentication
    /// the limit is `proxy::limits::AUTH_MESSAGE_LIMIT` (65 KiB) at most.
    pub max_message_bytes: u32,
    /// Sessions in progress at once, all cgroups together; more are
    /// refused with the protocol's "too many connections" error.
    pub max_sessions: usize,
    /// Sessions in progress at once per attached cgroup.
    pub max_sessions_per_cgroup: usize,
    /// Bytes all sessions together may hold in message buffers (beyond a
    /// 16 KiB standing chunk per buffer); a read that would exceed it ends
    /// its session with the protocol's out-of-memory error.
    pub max_buffered_bytes: usize,
}

pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 << 20;
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
pub const DEFAULT_MAX_SESSIONS_PER_CGROUP: usize = 256;
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_cgroup: DEFAULT_MAX_SESSIONS_PER_CGROUP,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    command: Option<Vec<String>>,
    webhook: Option<String>,
    notify_timeout: Option<String>,
    allow_same_uid: Option<bool>,
}

/// How new approval requests are announced (besides `approvals watch`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalConfig {
    /// Program and arguments run for each new request, the request as JSON on stdin.
    pub command: Option<Vec<String>>,
    /// URL that receives each new request as a JSON POST.
    pub webhook: Option<String>,
    pub notify_timeout: Duration,
    /// Whether an approver may decide a request held for a process running
    /// as the approver's own uid (default false: the workload's user cannot
    /// approve its own commands, even from outside the attached cgroup).
    pub allow_same_uid: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    policy: Option<PathBuf>,
    proxy_port: Option<u16>,
    state_dir: Option<PathBuf>,
    database: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    bpf_pin_dir: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    socket_mark: Option<u32>,
    sync: Option<SyncMode>,
    upstream_connect_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

/// How hard SQLite works to make a commit survive. `full` survives power
/// loss; `normal` survives a daemon crash (WAL) and is faster.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Full,
    Normal,
}

/// The resolved daemon configuration: every field has its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (None: built-in defaults).
    pub source: Option<PathBuf>,
    pub policy: PathBuf,
    pub proxy_port: u16,
    pub state_dir: PathBuf,
    pub database: PathBuf,
    pub control_socket: PathBuf,
    /// Unix group (besides root) allowed to use the control socket.
    pub control_group: Option<String>,
    pub bpf_pin_dir: PathBuf,
    /// The cgroup2 mount; None = detect from /proc/self/mountinfo.
    pub cgroup_root: Option<PathBuf>,
    pub socket_mark: u32,
    pub sync: SyncMode,
    pub upstream_connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub approvals: ApprovalConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub identity: IdentityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            policy: DEFAULT_POLICY_PATH.into(),
            proxy_port: DEFAULT_PROXY_PORT,
            state_dir: DEFAULT_STATE_DIR.into(),
            database: DEFAULT_DATABASE.into(),
            control_socket: DEFAULT_CONTROL_SOCKET.into(),
            control_group: None,
            bpf_pin_dir: DEFAULT_PIN_DIR.into(),
            cgroup_root: None,
            socket_mark: DEFAULT_SOCKET_MARK,
            sync: SyncMode::Full,
            upstream_connect_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            approvals: ApprovalConfig {
                command: None,
                webhook: None,
                notify_timeout: Duration::from_secs(10),
                allow_same_uid: false,
            },
            tls: TlsConfig {
                ca_dir: PathBuf::from(DEFAULT_STATE_DIR).join("ca"),
                upstream_verify: true,
                upstream_ca_file: None,
            },
            limits: Limits::default(),
            identity: IdentityConfig {
                enroll_socket: DEFAULT_ENROLL_SOCKET.into(),
                issuers: Vec::new(),
                max_token_age: DEFAULT_MAX_TOKEN_AGE,
            },
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Loads `path` if it exists; the built-in defaults if the default path
    /// is missing. A missing file that was named explicitly is an error.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    Self::load(p)
                } else {
                    Ok(Config::default())
                }
            }
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let d = raw.daemon;
        let defaults = Config::default();
        let invalid = |key: &str, message: String| {
            let (line, column) = find_key(text, key);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let state_dir = d.state_dir.map(resolve).unwrap_or(defaults.state_dir);
        let database = d
            .database
            .map(resolve)
            .unwrap_or_else(|| state_dir.join("interceptor.db"));
        let proxy_port = d.proxy_port.unwrap_or(defaults.proxy_port);
        if proxy_port == 0 {
            return Err(invalid(
                "proxy_port",
                "daemon.proxy_port must be between 1 and 65535".into(),
            ));
        }
        let parse_dur = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(&s).ok_or_else(|| {
                invalid(
                    key,
                    format!(
                        "daemon.{key}: invalid duration {s:?} (use e.g. \"500ms\", \"10s\", \"5m\")"
                    ),
                )
            }),
        };
        let max_message_bytes = raw
            .limits
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 1024 {
            return Err(invalid(
                "max_message_bytes",
                "limits.max_message_bytes must be at least 1024".into(),
            ));
        }
        let max_sessions = raw.limits.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            return Err(invalid(
                "max_sessions",
                "limits.max_sessions must be at least 1".into(),
            ));
        }
        let max_sessions_per_cgroup = raw
            .limits
            .max_sessions_per_cgroup
            .unwrap_or(DEFAULT_MAX_SESSIONS_PER_CGROUP);
        if max_sessions_per_cgroup == 0 {
            return Err(invalid(
                "max_sessions_per_cgroup",
                "limits.max_sessions_per_cgroup must be at least 1".into(),
            ));
        }
        let max_buffered_bytes = match raw.limits.max_buffered_bytes {
            None => DEFAULT_MAX_BUFFERED_BYTES.max(max_message_bytes as usize),
            Some(b) if b < u64::from(max_message_bytes) => {
                return Err(invalid(
                    "max_buffered_bytes",
                    format!(
                        "limits.max_buffered_bytes ({b}) must be at least limits.max_message_bytes ({max_message_bytes}): a message the limits allow must fit"
                    ),
                ));
            }
            Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
        };
        let tls = TlsConfig {
            ca_dir: raw
                .tls
                .ca_dir
                .map(resolve)
                .unwrap_or_else(|| state_dir.join("ca")),
            upstream_verify: raw.tls.upstream_verify.unwrap_or(true),
            upstream_ca_file: raw.tls.upstream_ca_file.map(resolve),
        };
        let max_token_age = match raw.identity.max_token_age {
            None => DEFAULT_MAX_TOKEN_AGE,
            Some(s) => match parse_duration(&s) {
                Some(d) if d >= Duration::from_secs(1) => d,
                _ => {
                    return Err(invalid(
                        "max_token_age",
                        format!(
                            "identity.max_token_age: invalid duration {s:?} (at least \"1s\", e.g. \"15m\")"
                        ),
                    ));
                }
            },
        };
        let identity = IdentityConfig {
            max_token_age,
            enroll_socket: raw
                .identity
                .enroll_socket
                .map(resolve)
                .unwrap_or(defaults.identity.enroll_socket),
            issuers: raw
                .identity
                .issuer
                .into_iter()
                .map(|mut i| {
                    i.jwks_file = i.jwks_file.map(resolve);
                    i
                })
                .collect(),
        };
        Ok(Config {
            identity,
            tls,
            limits: Limits {
                max_message_bytes,
                max_sessions,
                max_sessions_per_cgroup,
                max_buffered_bytes,
            },
            source: Some(path.to_path_buf()),
            policy: d.policy.map(resolve).unwrap_or(defaults.policy),
            proxy_port,
            state_dir,
            database,
            control_socket: d
                .control_socket
                .map(resolve)
                .unwrap_or(defaults.control_socket),
            control_group: d.control_group.filter(|g| !g.is_empty()),
            bpf_pin_dir: d.bpf_pin_dir.map(resolve).unwrap_or(defaults.bpf_pin_dir),
            cgroup_root: d.cgroup_root.map(resolve),
            socket_mark: d.socket_mark.unwrap_or(defaults.socket_mark),
            sync: d.sync.unwrap_or_default(),
            upstream_connect_timeout: parse_dur(
                "upstream_connect_timeout",
                d.upstream_connect_timeout,
                defaults.upstream_connect_timeout,
            )?,
            shutdown_grace: parse_dur("shutdown_grace", d.shutdown_grace, defaults.shutdown_grace)?,
            approvals: ApprovalConfig {
                command: match raw.approvals.command {
                    Some(c) if c.is_empty() => {
                        return Err(invalid("command", "approvals.command: give the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"--channel\", \"ops\"]".into()));
                    }
                    c => c,
                },
                webhook: match raw.approvals.webhook {
                    Some(w) if !(w.starts_with("http://") || w.starts_with("https://")) => {
                        return Err(invalid(
                            "webhook",
                            format!("approvals.webhook: {w:?} is not an http:// or https:// URL"),
                        ));
                    }
                    w => w,
                },
                allow_same_uid: raw.approvals.allow_same_uid.unwrap_or(false),
                notify_timeout: match raw.approvals.notify_timeout {
                    None => defaults.approvals.notify_timeout,
                    Some(s) => parse_duration(&s).ok_or_else(|| {
                        invalid(
                            "notify_timeout",
                            format!("approvals.notify_timeout: invalid duration {s:?}"),
                        )
                    })?,
                },
            },
        })
    }
}

/// Parses "500ms", "10s", "5m", "1h".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

/// Position of `key =` in the file, for errors found after deserialising.
fn find_key(text: &str, key: &str) -> (usize, usize) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            let col = line.len() - trimmed.len();
            return line_col(text, offset + col);
        }
        offset += line.len();
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let c = Config::parse("", Path::new("/etc/interceptor/interceptor.toml")).unwrap();
        assert_eq!(c.proxy_port, DEFAULT_PROXY_PORT);
        assert_eq!(c.database, Path::new(DEFAULT_DATABASE));
        assert_eq!(c.sync, SyncMode::Full);
    }

    #[test]
    fn relative_paths_resolve_against_file() {
        let c = Config::parse(
            "[daemon]\npolicy = \"p.toml\"\nstate_dir = \"state\"\n",
            Path::new("/tmp/x/interceptor.toml"),
        )
        .unwrap();
        assert_eq!(c.policy, Path::new("/tmp/x/p.toml"));
        assert_eq!(c.database, Path::new("/tmp/x/state/interceptor.db"));
    }

    #[test]
    fn unknown_field_names_line() {
        let err = Config::parse("[daemon]\nproxy_port = 1\nbogus = 2\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:3:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = Config::parse("[daemon]\n\nproxy_port = \"x\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:3:"), "{err}");
    }

    #[test]
    fn bad_duration_and_port() {
        let err = Config::parse("[daemon]\nshutdown_grace = \"ten\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:2:1:"), "{err}");
        let err = Config::parse("[daemon]\nproxy_port = 0\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy_port"), "{err}");
    }

    #[test]
    fn limits_defaults_and_checks() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_sessions, 4096);
        assert_eq!(c.limits.max_sessions_per_cgroup, 256);
        assert_eq!(c.limits.max_buffered_bytes, 256 << 20);
        let c = Config::parse(
            "[limits]\nmax_message_bytes = 1048576\nmax_sessions = 10\nmax_sessions_per_cgroup = 3\nmax_buffered_bytes = 8388608\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            c.limits,
            Limits {
                max_message_bytes: 1 << 20,
                max_sessions: 10,
                max_sessions_per_cgroup: 3,
                max_buffered_bytes: 8 << 20,
            }
        );
        // A larger message limit raises the default budget with it.
        let c = Config::parse(
            "[limits]\nmax_message_bytes = 536870912\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.limits.max_buffered_bytes, 512 << 20);
        for (text, key) in [
            ("[limits]\nmax_sessions = 0\n", "max_sessions"),
            (
                "[limits]\nmax_sessions_per_cgroup = 0\n",
                "max_sessions_per_cgroup",
            ),
            (
                "[limits]\nmax_message_bytes = 2048\nmax_buffered_bytes = 1024\n",
                "max_buffered_bytes",
            ),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.starts_with("c.toml:"), "{err}");
        }
    }

    #[test]
    fn identity_and_approval_hardening_keys() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c.identity.max_token_age, DEFAULT_MAX_TOKEN_AGE);
        assert!(!c.approvals.allow_same_uid);
        let c = Config::parse(
            "[identity]\nmax_token_age = \"5m\"\n[approvals]\nallow_same_uid = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.identity.max_token_age, Duration::from_secs(300));
        assert!(c.approvals.allow_same_uid);
        for bad in ["\"0s\"", "\"soon\"", "\"15\""] {
            let err = Config::parse(
                &format!("[identity]\nmax_token_age = {bad}\n"),
                Path::new("c.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("c.toml:2:1:") && err.contains("max_token_age"),
                "{err}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
