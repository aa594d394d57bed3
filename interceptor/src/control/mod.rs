//! The control socket: a unix socket (default `/run/interceptor/control.sock`)
//! speaking one JSON request per line and one JSON response per line.
//!
//! Who is asking is taken from the socket's peer credentials (SO_PEERCRED)
//! and the peer's pidfd (SO_PEERPIDFD, see [`peer`]), never from the
//! request. Administrative requests need uid 0 or membership of
//! `daemon.control_group`; the socket file itself is 0600 (0660 with a
//! control group), so other users cannot even connect. State-changing
//! requests (approve/deny, attach, detach, policy reload, revoking another
//! cgroup's enrollment) also need a caller established to be outside every
//! attached cgroup: the workload, whatever its uid, cannot approve its own
//! commands or change what intercepts it.

pub mod client;
pub mod peer;
pub mod server;

use serde::{Deserialize, Serialize};

/// Which cgroup a request is about: exactly one of the three.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    Attach(CgroupSelector),
    Detach(CgroupSelector),
    /// Intercept every process whose real uid is `user` (a name or a
    /// number), wherever it lives (`attach --uid`).
    AttachUid {
        user: String,
    },
    DetachUid {
        user: String,
    },
    /// Re-read the policy file (same as SIGHUP).
    PolicyReload,
    ApprovalsList {
        #[serde(default)]
        all: bool,
        #[serde(default = "default_limit")]
        limit: u32,
    },
    ApprovalsDecide {
        id: i64,
        approve: bool,
        #[serde(default)]
        reason: Option<String>,
        /// Approve the same statement shape in that session for this long.
        #[serde(default)]
        scope_minutes: Option<u32>,
    },
    /// Streams one response line per new approval request until the client
    /// disconnects.
    ApprovalsWatch,
    /// Bind a verified workload-identity token to the caller's own cgroup.
    Enroll {
        token: String,
    },
    /// End an enrollment: the caller's own cgroup, or (admin only) `cgroup`.
    EnrollRevoke {
        #[serde(default)]
        cgroup: Option<String>,
    },
    /// Where a process lives: its cgroup, the attached cgroup covering it,
    /// the identity enrolled for it.
    WhereIs {
        pid: u32,
    },
    /// Active enrollments (and with `all`, revoked and rejected attempts).
    EnrollmentsList {
        #[serde(default)]
        all: bool,
        #[serde(default = "default_limit")]
        limit: u32,
    },
}

fn default_limit() -> u32 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Response {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// Result of attach/detach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachResult {
    pub cgroup_id: u64,
    pub cgroup: String,
    /// For detach: false when the cgroup was not attached.
    pub changed: bool,
}

/// Result of `attach --uid` / `detach --uid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UidAttachResult {
    pub uid: u32,
    #[serde(default)]
    pub user: Option<String>,
    /// Attach: false when it was attached already. Detach: false when it
    /// was not attached.
    pub changed: bool,
}

/// `interceptor status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_at: String,
    pub cgroup_root: String,
    pub pin_dir: String,
    pub proxy_port: u16,
    pub database: String,
    pub policy: String,
    pub egress: String,
    pub attached: Vec<AttachResult>,
    /// Uids attached with `attach --uid`.
    #[serde(default)]
    pub attached_uids: Vec<crate::redirect::UidAttachment>,
    pub intercepts: Vec<InterceptInfo>,
    #[serde(default)]
    pub enrollments: Vec<serde_json::Value>,
    pub live_sessions: Vec<serde_json::Value>,
    pub counters: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterceptInfo {
    pub port: u16,
    pub cidr: Option<String>,
    pub protocol: String,
}
