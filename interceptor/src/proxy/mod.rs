//! The proxy: accepts redirected connections, works out who made them and
//! where they were going, records the session, applies the connection-level
//! policy, and hands the connection to its protocol module.
//!
//! Each protocol module has the same shape (see DESIGN.md): a codec, a
//! session loop, an upstream client and its errors. `tcp` is the fallback
//! for intercepted ports without a module: it relays bytes unchanged.

pub mod gate;
pub mod mysql;
pub mod postgres;
pub mod tcp;
pub mod tls;
pub mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProxyCountersSnapshot {
    pub accepted: u64,
    pub no_origin: u64,
    pub denied_connections: u64,
    pub upstream_failures: u64,
    pub record_failures: u64,
}

impl ProxyCounters {
    pub fn snapshot(&self) -> ProxyCountersSnapshot {
        ProxyCountersSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            no_origin: self.no_origin.load(Ordering::Relaxed),
            denied_connections: self.denied_connections.load(Ordering::Relaxed),
            upstream_failures: self.upstream_failures.load(Ordering::Relaxed),
            record_failures: self.record_failures.load(Ordering::Relaxed),
        }
    }
}

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

/// Registry of live sessions.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<BTreeMap<i64, LiveEntry>>,
}

impl Sessions {
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

/// Binds the proxy listener on 127.0.0.1 and ::1 (the addresses the eBPF
/// programs rewrite to). ::1 is optional: hosts with IPv6 disabled still
/// get IPv4 interception.
pub async fn bind(port: u16) -> std::io::Result<Vec<TcpListener>> {
    let v4 = TcpListener::bind(("127.0.0.1", port)).await?;
    let mut out = vec![v4];
    let v6 = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )
    .and_then(|s| {
        s.set_only_v6(true)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)).into())?;
        s.listen(1024)?;
        TcpListener::from_std(s.into())
    });
    match v6 {
        Ok(l) => out.push(l),
        Err(e) => {
            warn!(error = %e, "no IPv6 proxy listener on [::1]:{port}; IPv6 connects will be refused")
        }
    }
    Ok(out)
}

/// Accepts connections until the shutdown signal fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
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
            refuse(protocol, client, &judged.message).await;
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
async fn refuse(protocol: Protocol, client: TcpStream, message: &str) {
    match protocol {
        Protocol::Postgres => postgres::refuse(client, message).await,
        Protocol::Mysql => mysql::refuse(client, message).await,
        Protocol::Tcp | Protocol::Ssh | Protocol::Http => drop(client),
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
