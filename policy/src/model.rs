//! The values a decision is made about, and the decision itself.

use crate::sql::SqlStatement;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// What happens to a command (or a connection).
///
/// Strictness orders verdicts: `Deny` > `Review` > `Allow`; `Ord` follows
/// strictness, so `a.max(b)` is the stricter of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forward the command.
    Allow,
    /// Refuse the command with the protocol's own error.
    Deny,
    /// Hold the command until a human approves or rejects it.
    Review,
}

impl Verdict {
    /// 0 = allow, 1 = review, 2 = deny.
    pub fn strictness(self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Review => 1,
            Verdict::Deny => 2,
        }
    }

    /// The lowercase name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Review => "review",
        }
    }
}

impl PartialOrd for Verdict {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Verdict {
    fn cmp(&self, other: &Self) -> Ordering {
        self.strictness().cmp(&other.strictness())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            "review" => Ok(Verdict::Review),
            _ => Err(format!(
                "unknown decision {s:?} (expected one of: allow, deny, review)"
            )),
        }
    }
}

/// The application protocol spoken on an intercepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque TCP: only the connection itself is judged.
    Tcp,
    /// PostgreSQL wire protocol.
    Postgres,
    /// MySQL / MariaDB wire protocol.
    Mysql,
    /// SSH.
    Ssh,
    /// HTTP/1.x (and TLS with SNI).
    Http,
}

impl Protocol {
    /// Every protocol, in id order.
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Ssh,
        Protocol::Http,
    ];

    /// The stable id shared with the eBPF side (Tcp=1, Postgres=2, Mysql=3,
    /// Ssh=4, Http=5). 0 is never used.
    pub fn id(self) -> u8 {
        match self {
            Protocol::Tcp => 1,
            Protocol::Postgres => 2,
            Protocol::Mysql => 3,
            Protocol::Ssh => 4,
            Protocol::Http => 5,
        }
    }

    /// The protocol with stable id `id`, if any.
    pub fn from_id(id: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The lowercase name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
        }
    }

    /// Whether commands on this protocol are SQL statements.
    pub fn is_sql(self) -> bool {
        matches!(self, Protocol::Postgres | Protocol::Mysql)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown protocol {s:?} (expected one of: tcp, postgres, mysql, ssh, http)")
            })
    }
}

/// What the eBPF side does with connections that match neither an
/// `[[intercept]]` nor an `[[egress_allow]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Leave them alone (default).
    #[default]
    Allow,
    /// Refuse them: `connect()` fails with `EPERM`.
    Deny,
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Egress::Allow => "allow",
            Egress::Deny => "deny",
        })
    }
}

/// The `[defaults]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Verdict when no rule matches (default `allow`).
    pub decision: Verdict,
    /// Verdict for SQL the parser cannot classify (default `review`).
    pub unparsed: Verdict,
    /// How long a `review` waits for a human (default 5 minutes).
    pub approval_timeout: Duration,
    /// What happens to non-intercepted connections (default `allow`).
    pub egress: Egress,
    /// Whether every intercepted connection needs a verified identity.
    pub require_identity: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            decision: Verdict::Allow,
            unparsed: Verdict::Review,
            approval_timeout: Duration::from_secs(300),
            egress: Egress::Allow,
            require_identity: false,
        }
    }
}

/// One `[[intercept]]` entry: destinations the eBPF side redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptRule {
    /// Destination port.
    pub port: u16,
    /// Destination network; `None` = any address, IPv4 and IPv6.
    pub net: Option<ipnet::IpNet>,
    /// How the proxy speaks to these connections.
    pub protocol: Protocol,
}

/// One `[[egress_allow]]` entry (at least one of the two is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressAllow {
    /// Destination port; `None` = any port.
    pub port: Option<u16>,
    /// Destination network; `None` = any address.
    pub net: Option<ipnet::IpNet>,
}

/// A verified workload identity (an enrolled CI token).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identity {
    /// Token issuer (`iss`).
    pub issuer: String,
    /// Token subject (`sub`).
    pub subject: String,
    /// Verified claims, values stringified (`repository`, `sha`, `ref`,
    /// `actor`, `workflow`, `run_id`, ...).
    pub claims: BTreeMap<String, String>,
}

/// The process (and its cgroup) that opened the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Workload {
    /// cgroup v2 path, e.g. `/system.slice/actions.runner.x.service/job-1`.
    pub cgroup: String,
    /// systemd unit owning the cgroup.
    pub unit: Option<String>,
    /// Absolute path of the executable.
    pub exe: Option<String>,
    /// Kernel `comm` (short process name).
    pub comm: Option<String>,
    /// User id.
    pub uid: Option<u32>,
    /// Process id (recorded, not matched).
    pub pid: Option<u32>,
    /// The verified identity, if the workload is enrolled.
    pub identity: Option<Identity>,
}

/// The original destination of an intercepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Protocol from the matching `[[intercept]]`.
    pub protocol: Protocol,
    /// Original destination address.
    pub addr: IpAddr,
    /// Original destination port.
    pub port: u16,
    /// HTTP `Host` / TLS SNI / a host name the protocol announced.
    pub host: Option<String>,
    /// Database named in the startup / handshake packet.
    pub database: Option<String>,
    /// Database or SSH user name.
    pub user: Option<String>,
}

/// The thing being decided.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// The connection itself (before any command).
    Connect,
    /// One classified SQL statement.
    Sql(&'a SqlStatement),
    /// SQL the classifier could not parse.
    SqlUnparsed {
        /// The statement text.
        text: &'a str,
        /// The parser's error message.
        error: &'a str,
    },
    /// One SSH exec request or interactive shell command line.
    ///
    /// No protocol module judges SSH commands yet (SSH is relayed as opaque
    /// TCP) and rules with `ssh.*` keys are refused at load (see
    /// [`JUDGED_FAMILIES`](crate::JUDGED_FAMILIES)), so only connection
    /// rules match this; `interceptor policy check` uses it.
    SshCommand(&'a str),
    /// One HTTP request. Like [`Operation::SshCommand`], not judged by any
    /// module yet: only connection rules match it.
    Http {
        /// Request method, e.g. `GET`.
        method: &'a str,
        /// `Host` header (or SNI / address when absent).
        host: &'a str,
        /// Request target path (the query string and fragment are ignored
        /// when matching).
        path: &'a str,
    },
}

/// The outcome of [`Policy::decide`](crate::Policy::decide).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// The deciding rule's name; `defaults.require_identity` when that
    /// setting decided; `None` when a default decided.
    pub rule: Option<String>,
    /// The deciding rule's `message`, to show to the client.
    pub message: Option<String>,
    /// Human-readable explanation, for records and error texts.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_strictness_order() {
        assert!(Verdict::Deny > Verdict::Review);
        assert!(Verdict::Review > Verdict::Allow);
        assert_eq!(Verdict::Allow.max(Verdict::Review), Verdict::Review);
        assert_eq!(Verdict::Deny.to_string(), "deny");
        assert_eq!("review".parse::<Verdict>(), Ok(Verdict::Review));
        assert!("Allow".parse::<Verdict>().is_err());
    }

    #[test]
    fn protocol_ids_are_stable() {
        let want = [
            (Protocol::Tcp, 1, "tcp"),
            (Protocol::Postgres, 2, "postgres"),
            (Protocol::Mysql, 3, "mysql"),
            (Protocol::Ssh, 4, "ssh"),
            (Protocol::Http, 5, "http"),
        ];
        for (p, id, name) in want {
            assert_eq!(p.id(), id);
            assert_eq!(Protocol::from_id(id), Some(p));
            assert_eq!(p.to_string(), name);
            assert_eq!(name.parse::<Protocol>(), Ok(p));
        }
        assert_eq!(Protocol::from_id(0), None);
        assert_eq!(Protocol::from_id(6), None);
        assert!("postgresql".parse::<Protocol>().is_err());
    }

    #[test]
    fn defaults_are_documented_values() {
        let d = Defaults::default();
        assert_eq!(d.decision, Verdict::Allow);
        assert_eq!(d.unparsed, Verdict::Review);
        assert_eq!(d.approval_timeout, Duration::from_secs(300));
        assert_eq!(d.egress, Egress::Allow);
        assert!(!d.require_identity);
    }
}
