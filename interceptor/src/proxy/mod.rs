//! The proxy: accepts redirected connections, works out who made them and
//! where they were going, records the session, applies the connection-level
//! policy, and hands the connection to its protocol module.
//!
//! Each protocol module has the same shape (see DESIGN.md): a codec, a
//! session loop, an upstream client and its errors. `tcp` is the fallback
//! for intercepted ports without a module: it relays bytes unchanged.

pub mod gate;
pub mod limits;
pub mod listen;
pub mod mysql;
pub mod postgres;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, info_span, warn};

use crate::daemon::Shared;
use crate::identity;
use crate::record::{self, SessionEnd, SessionIdentity, SessionStart, WriteOp};
use crate::redirect::origin_addr;
use policy::{Operation, Protocol, Target, Verdict};

pub use tcp::ByteCounters;

/// Daemon-side counters shown by `interceptor status`.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub accepted: AtomicU64,
    pub no_origin: AtomicU64,
    pub denied_connections: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub record_failures: AtomicU64,
    /// Connections refused by a session cap (answered and recorded).
    pub refused_sessions: AtomicU64,
    /// Connections closed unanswered and unrecorded because too many
    /// refusals were already in progress.
    pub refused_unanswered: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProxyCountersSnapshot {
    pub accepted: u64,
    pub no_origin: u64,
    pub denied_connections: u64,
    pub upstream_failures: u64,
    pub record_failures: u64,
    pub refused_sessions: u64,
    pub refused_unanswered: u64,
    /// Bytes held in message buffers beyond their standing chunks, and
    /// the budget for them (`limits.max_buffered_bytes`).
    pub buffered_bytes: u64,
    pub buffered_bytes_limit: u64,
    /// Reads refused because the budget was spent (each ended a session).
    pub over_budget: u64,
}

impl ProxyCounters {
    pub fn snapshot(&self) -> ProxyCountersSnapshot {
        let budget = limits::MemoryBudget::global();
        ProxyCountersSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            no_origin: self.no_origin.load(Ordering::Relaxed),
            denied_connections: self.denied_connections.load(Ordering::Relaxed),
            upstream_failures: self.upstream_failures.load(Ordering::Relaxed),
            record_failures: self.record_failures.load(Ordering::Relaxed),
            refused_sessions: self.refused_sessions.load(Ordering::Relaxed),
            refused_unanswered: self.refused_unanswered.load(Ordering::Relaxed),
            buffered_bytes: budget.held() as u64,
            buffered_bytes_limit: budget.limit() as u64,
            over_budget: budget.refused(),
        }
    }
}

/// Why a connection is refused before its protocol session runs; each
/// protocol answers it with its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The policy denies the connection, or the destination cannot be
    /// reached.
    Denied,
    /// A session cap (`limits.max_sessions`,
    /// `limits.max_sessions_per_cgroup`) is reached.
    TooManySessions,
}

/// Refusals answered at once (each may wait a few seconds for the
/// client's start-up packet); connections refused beyond this are closed
/// at once, unrecorded, and counted.
const MAX_PENDING_REFUSALS: usize = 256;

/// A session in progress, as listed by `interceptor status`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSession {
    pub id: i64,
    pub protocol: String,
    pub started_at: String,
    pub cgroup: String,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub client: String,
    pub destination: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

struct LiveEntry {
    info: LiveSession,
    bytes: Arc<ByteCounters>,
}

/// Registry of live sessions, and their admission under the caps.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<BTreeMap<i64, LiveEntry>>,
    admission: Arc<limits::Admission>,
    refusing: AtomicUsize,
}

impl Sessions {
    /// Admits a session of attached cgroup `key` under `caps`.
    pub fn admit(
        &self,
        key: &str,
        caps: &crate::config::Limits,
    ) -> Result<limits::Ticket, limits::CapReached> {
        self.admission.admit(key, caps)
    }

    fn register(&self, info: LiveSession, bytes: Arc<ByteCounters>) {
        if let Ok(mut m) = self.live.lock() {
            m.insert(info.id, LiveEntry { info, bytes });
        }
    }

    fn unregister(&self, id: i64) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(&id);
        }
    }

    pub fn list(&self) -> Vec<LiveSession> {
        let Ok(m) = self.live.lock() else {
            return Vec::new();
        };
        m.values()
            .map(|e| LiveSession {
                bytes_up: e.bytes.up.load(Ordering::Relaxed),
                bytes_down: e.bytes.down.load(Ordering::Relaxed),
                ..e.info.clone()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no session is live, or the grace period ends.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let n = self.len();
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub use listen::bind;

/// Accepts connections until the shutdown signal fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    limits::MemoryBudget::global().set_limit(shared.config.limits.max_buffered_bytes);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(_) => continue,
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(origin) = shared.origins.take(peer, local) else {
            shared.counters.no_origin.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "connection to the proxy port without a recorded origin (a direct connect?); closing");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, stream, peer, origin).await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    origin: interceptor_common::Origin,
) {
    let _ = client.set_nodelay(true);
    let dst = origin_addr(&origin);
    let protocol = Protocol::from_id(origin.protocol).unwrap_or(Protocol::Tcp);
    let roots = shared.identity_roots();
    let resolved = identity::resolve(&origin, &shared.cgroup, &shared.paths, &roots);
    let mut workload = resolved.workload;
    workload.identity = shared
        .enrollments
        .lookup(
            &shared.cgroup,
            &workload.cgroup,
            identity::enroll::now_unix(),
        )
        .map(|e| e.identity);
    let key = limits::admission_key(&workload.cgroup, &roots);
    let ticket = shared.sessions.admit(&key, &shared.config.limits);
    // Refusals in progress are bounded too: past that, a refused connection
    // is closed unanswered (a flood of connects cannot pile up tasks).
    let refusing = match &ticket {
        Ok(_) => None,
        Err(_) => match RefusalSlot::take(&shared) {
            Some(slot) => Some(slot),
            None => {
                shared
                    .counters
                    .refused_unanswered
                    .fetch_add(1, Ordering::Relaxed);
                warn_refused_unanswered(&key);
                return;
            }
        },
    };
    let id = shared.recorder.next_session_id();
    let span = info_span!("session", session = id, protocol = %protocol, cgroup = %workload.cgroup, peer = %peer);
    async move {
        let started_at = record::now_rfc3339();
        let start = SessionStart {
            id,
            started_at: started_at.clone(),
            protocol: protocol.to_string(),
            client_addr: peer.to_string(),
            dst_addr: dst.ip().to_string(),
            dst_port: dst.port(),
            identity: session_identity(&workload, resolved.cgroup_id),
        };
        // The session is on disk before a byte goes upstream.
        if let Err(e) = shared
            .recorder
            .commit(WriteOp::SessionStart(Box::new(start)))
            .await
        {
            shared
                .counters
                .record_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "cannot record session; refusing the connection");
            return;
        }
        let ticket = match ticket {
            Ok(t) => t,
            Err(cap) => {
                shared
                    .counters
                    .refused_sessions
                    .fetch_add(1, Ordering::Relaxed);
                warn!(pid = ?workload.pid, exe = ?workload.exe, destination = %dst, "{cap}; refusing the connection");
                refuse(
                    protocol,
                    client,
                    Refusal::TooManySessions,
                    &format!("interceptor: {cap} (session {id})"),
                )
                .await;
                drop(refusing);
                let end = SessionEnd {
                    id,
                    ended_at: record::now_rfc3339(),
                    bytes_up: 0,
                    bytes_down: 0,
                    end_reason: format!("refused: {cap}"),
                };
                if let Err(e) = shared.recorder.enqueue(WriteOp::SessionEnd(end)).await {
                    warn!(error = %e, "cannot record session end");
                }
                return;
            }
        };
        info!(pid = ?workload.pid, exe = ?workload.exe, destination = %dst, "session started");
        let bytes = Arc::new(ByteCounters::default());
        shared.sessions.register(
            LiveSession {
                id,
                protocol: protocol.to_string(),
                started_at,
                cgroup: workload.cgroup.clone(),
                pid: workload.pid,
                exe: workload.exe.clone(),
                client: peer.to_string(),
                destination: dst.to_string(),
                bytes_up: 0,
                bytes_down: 0,
            },
            bytes.clone(),
        );
        let reason =
            run_session(&shared, id, client, dst, protocol, &workload, bytes.clone()).await;
        shared.sessions.unregister(id);
        drop(ticket);
        let end = SessionEnd {
            id,
            ended_at: record::now_rfc3339(),
            bytes_up: bytes.up.load(Ordering::Relaxed),
            bytes_down: bytes.down.load(Ordering::Relaxed),
            end_reason: reason.clone(),
        };
        if let Err(e) = shared.recorder.enqueue(WriteOp::SessionEnd(end)).await {
            warn!(error = %e, "cannot record session end");
        }
        info!(reason = %reason, "session ended");
    }
    .instrument(span)
    .await
}

/// What a protocol module gets for one session.
pub struct SessionCtx {
    pub shared: Arc<Shared>,
    pub id: i64,
    pub workload: policy::Workload,
    pub target: Target,
    /// Bytes relayed, for `status` and the session record.
    pub bytes: Arc<ByteCounters>,
}

async fn run_session(
    shared: &Arc<Shared>,
    id: i64,
    client: TcpStream,
    dst: SocketAddr,
    protocol: Protocol,
    workload: &policy::Workload,
    bytes: Arc<ByteCounters>,
) -> String {
    let target = Target {
        protocol,
        addr: dst.ip(),
        port: dst.port(),
        host: None,
        database: None,
        user: None,
    };
    let ctx = SessionCtx {
        shared: shared.clone(),
        id,
        workload: workload.clone(),
        target,
        bytes,
    };
    // Connection-level decision. Protocol modules answer a refusal in their
    // own wire format; a `review` here is settled per command by them. The
    // plain relay has no commands, so it holds the connection itself.
    let decision = shared
        .policy()
        .decide(workload, &ctx.target, &Operation::Connect);
    if decision.verdict == Verdict::Deny
        || (decision.verdict == Verdict::Review && !has_module(protocol))
    {
        let mut gate = gate::Gate::new(shared.clone(), id, workload.clone(), ctx.target.clone());
        let op = gate::Op {
            operation: Operation::Connect,
            kind: "connect",
            text: "connect",
            label: None,
            shape: Some(format!("connect {dst}")),
            detail: None,
            lexing: None,
        };
        let judged = match gate.judge(&[op]).await {
            Ok(j) => j,
            Err(e) => return format!("cannot record the connection decision: {e}"),
        };
        if !judged.allowed {
            shared
                .counters
                .denied_connections
                .fetch_add(1, Ordering::Relaxed);
            refuse(protocol, client, Refusal::Denied, &judged.message).await;
            return format!("connection refused: {}", judged.decision.reason);
        }
    }
    let upstream = match upstream::connect(
        dst,
        shared.config.socket_mark,
        shared.config.upstream_connect_timeout,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            let reason = format!("upstream connect failed: {e}");
            refuse(
                protocol,
                client,
                Refusal::Denied,
                &format!("interceptor: {reason} (session {id})"),
            )
            .await;
            return reason;
        }
    };
    match protocol {
        Protocol::Postgres => postgres::run(ctx, client, upstream).await,
        Protocol::Mysql => mysql::run(ctx, client, upstream).await,
        // Protocols without a module are relayed (and recorded) as plain TCP.
        Protocol::Tcp | Protocol::Ssh | Protocol::Http => {
            tcp::relay(client, upstream, ctx.bytes).await
        }
    }
}

/// Whether a protocol has a module that judges individual commands.
fn has_module(protocol: Protocol) -> bool {
    match protocol {
        Protocol::Postgres => postgres::JUDGES_COMMANDS,
        Protocol::Mysql => mysql::JUDGES_COMMANDS,
        Protocol::Tcp | Protocol::Ssh | Protocol::Http => false,
    }
}

/// Tells the client, in its protocol, that the connection is refused.
async fn refuse(protocol: Protocol, client: TcpStream, why: Refusal, message: &str) {
    match protocol {
        Protocol::Postgres => postgres::refuse(client, why, message).await,
        Protocol::Mysql => mysql::refuse(client, why, message).await,
        Protocol::Tcp | Protocol::Ssh | Protocol::Http => drop(client),
    }
}

/// One of the [`MAX_PENDING_REFUSALS`] refusals that may be in progress.
struct RefusalSlot(Arc<Shared>);

impl RefusalSlot {
    fn take(shared: &Arc<Shared>) -> Option<RefusalSlot> {
        let n = shared.sessions.refusing.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_PENDING_REFUSALS {
            shared.sessions.refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RefusalSlot(shared.clone()))
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.sessions.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs connections closed unanswered, at most once a second.
fn warn_refused_unanswered(key: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        warn!(cgroup = %key, "session caps reached and {MAX_PENDING_REFUSALS} refusals in progress: closing further connections unanswered");
    }
}

/// The identity columns of a session record.
pub fn session_identity(w: &policy::Workload, cgroup_id: u64) -> SessionIdentity {
    let claim = |name: &str| {
        w.identity
            .as_ref()
            .and_then(|i| i.claims.get(name).cloned())
    };
    SessionIdentity {
        cgroup_path: w.cgroup.clone(),
        cgroup_id,
        unit: w.unit.clone(),
        pid: w.pid,
        exe: w.exe.clone(),
        comm: w.comm.clone(),
        uid: w.uid,
        issuer: w.identity.as_ref().map(|i| i.issuer.clone()),
        subject: w.identity.as_ref().map(|i| i.subject.clone()),
        token_id: claim("jti"),
        repository: claim("repository").or_else(|| claim("project_path")),
        sha: claim("sha"),
        run_id: claim("run_id").or_else(|| claim("pipeline_id")),
        actor: claim("actor").or_else(|| claim("user_login")),
        claims: w
            .identity
            .as_ref()
            .and_then(|i| serde_json::to_string(&i.claims).ok()),
    }
}
