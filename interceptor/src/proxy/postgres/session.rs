//! One PostgreSQL session.
//!
//! 1. **Start-up.** SSLRequest is answered `S` and the client's TLS is
//!    terminated with a certificate of the local CA (a direct TLS hello,
//!    PostgreSQL 17's `sslnegotiation=direct`, too); GSSENCRequest is
//!    answered `N` (the client falls back); a CancelRequest is relayed to
//!    the server that issued the key. The StartupMessage names the user and
//!    database (recorded on the session). When the client uses TLS, TLS is
//!    asked of the server too, and used if it agrees.
//! 2. **Authentication** is relayed both ways unchanged, except that
//!    `SCRAM-SHA-256-PLUS` is struck from the server's offer when the
//!    client's TLS ends here (channel binding cannot survive the
//!    interception). A libpq client then sends the `y` channel-binding
//!    flag, which a server on TLS refuses by design; for that case only,
//!    the server leg is reopened in plain TCP and the exchange continues
//!    there (logged and recorded as `tls_downgrade`).
//! 3. **Commands.** Two loops run side by side. The client loop judges each
//!    statement (simple Query, each Parse, FunctionCall) through the gate —
//!    which records it durably, and holds it while a human reviews — and
//!    forwards only what is allowed; each Execute of a prepared statement
//!    is recorded under its Parse-time decision. The server loop matches
//!    each reply to what was sent (a queue of [`Pending`] items in wire
//!    order), masks DataRows, rewrites placeholder errors into refusals,
//!    and records outcomes (duration, rows, error).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use policy::ResultLimit;
use policy::sql::lex::charset;
use policy::sql::{Encoding, Lexing};
use policy::{ActiveMasks, Decision, Operation, SqlStatement, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tracing::{debug, info, warn};

use super::codec::{self, Frame, FrameReader, Frontend, Startup};
use super::error::{CodecError, PgError};
use super::mask::{self, CopyOut, CopyPlan, RowPlan};
use super::upstream::{self, BoxRead, BoxWrite, Stream};
use crate::daemon::Shared;
use crate::proxy::gate::{Classified, Gate, Judgement, Op};
use crate::proxy::{ByteCounters, SessionCtx};
use crate::record::{EventOutcome, WriteOp};

/// How long a client may take to send its start-up packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffer sizes of the relayed directions.
const WRITE_BUFFER: usize = 32 * 1024;
/// Most named statements / portals tracked per session for recording.
const MAX_TRACKED: usize = 10_000;
/// How long outcomes wait for the next statement's record before they are
/// recorded on their own.
const OUTCOME_DELAY: Duration = Duration::from_millis(20);
/// The statement a refused one is replaced with: always a syntax error.
const PLACEHOLDER: &str = "INTERCEPTOR_REFUSED";

// ------------------------------------------------------------ cancel keys

/// Where a backend key was issued, for CancelRequest relaying.
#[derive(Debug, Clone, Copy)]
struct CancelTarget {
    addr: SocketAddr,
    session: i64,
}

fn cancel_keys() -> &'static Mutex<HashMap<Vec<u8>, CancelTarget>> {
    static KEYS: OnceLock<Mutex<HashMap<Vec<u8>, CancelTarget>>> = OnceLock::new();
    KEYS.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a session's backend key when the session ends.
struct CancelGuard {
    key: Vec<u8>,
    session: i64,
}

impl CancelGuard {
    fn register(key: &[u8], target: CancelTarget) -> CancelGuard {
        lock(cancel_keys()).insert(key.to_vec(), target);
        CancelGuard {
            key: key.to_vec(),
            session: target.session,
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut m = lock(cancel_keys());
        if m.get(&self.key).is_some_and(|t| t.session == self.session) {
            m.remove(&self.key);
        }
    }
}

// ---------------------------------------------------------------- start-up

/// Reads one start-up packet body (after its length); `None` if the stream
/// ends first. The body grows as its bytes arrive (the length field is
/// checked against [`codec::MAX_STARTUP`] first), so a client announcing a
/// packet and stalling holds next to nothing.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, PgError> {
    let mut hdr = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut hdr[got..]).await.map_err(PgError::ClientIo)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(PgError::Client(CodecError::Truncated))
            };
        }
        got += n;
    }
    let len = codec::startup_len(hdr).map_err(PgError::Client)? - 4;
    let mut body = Vec::new();
    (&mut *r)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(PgError::ClientIo)?;
    if body.len() < len {
        return Err(PgError::Client(CodecError::Truncated));
    }
    Ok(Some(body))
}

enum Opening {
    Startup {
        client: Stream,
        server: Stream,
        body: Vec<u8>,
        /// What was verified of the server's certificate (TLS leg only).
        tls_note: Option<String>,
    },
    Cancel {
        key: Vec<u8>,
        server: Stream,
    },
    Closed,
}

/// The server leg once the client's TLS (if any) is settled: TLS when the
/// server agreed, verified for the name the client asked for.
async fn server_leg(
    shared: &Arc<Shared>,
    dst: SocketAddr,
    client: &mut Stream,
    raw: TcpStream,
    agreed: bool,
    note: &mut Option<String>,
) -> Result<Stream, PgError> {
    if !agreed {
        if client.is_tls() {
            info!("the client uses TLS but the server does not: the server leg is plain TCP");
        }
        return Ok(Stream::Plain(raw));
    }
    let sni = client.sni();
    match upstream::connect_tls(shared, dst, sni.as_deref(), raw).await {
        Ok((s, n)) => {
            *note = Some(n);
            Ok(s)
        }
        Err(e) => {
            let m = format!("interceptor: {e}");
            let _ = write_client(client, &codec::error_response("FATAL", "08001", &m)).await;
            Err(e)
        }
    }
}

/// Start-up negotiation. The client's SSLRequest is answered as the server
/// answers ours: `S` when the server speaks TLS (then TLS is terminated
/// here, and spoken to the server once the client's handshake has named
/// the server it expects), `N` when it does not — so a client gets the
/// same choice as without the interceptor (`sslmode=require` against a
/// server without TLS fails the same way).
async fn open_client(
    shared: &Arc<Shared>,
    dst: SocketAddr,
    tcp: TcpStream,
    upstream: TcpStream,
) -> Result<Opening, PgError> {
    let mut raw_upstream = Some(upstream);
    let mut server: Option<Stream> = None;
    let mut tls_note = None;
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(PgError::ClientIo)? == 0 {
        return Ok(Opening::Closed);
    }
    let mut stream = if first[0] == 0x16 {
        // A TLS ClientHello straight away (direct TLS negotiation): the
        // server is asked for TLS too, and used plain if it has none.
        match raw_upstream.take() {
            Some(mut raw) => {
                let agreed = upstream::ask_tls(&mut raw).await?;
                let mut client = upstream::accept_tls(shared, dst, tcp, true).await?;
                server =
                    Some(server_leg(shared, dst, &mut client, raw, agreed, &mut tls_note).await?);
                client
            }
            None => return Ok(Opening::Closed),
        }
    } else {
        Stream::Plain(tcp)
    };
    for _ in 0..4 {
        let Some(body) = read_startup(&mut stream).await? else {
            return Ok(Opening::Closed);
        };
        match codec::decode_startup(&body).map_err(PgError::Client)? {
            Startup::Ssl => {
                let (Stream::Plain(mut tcp), Some(mut raw)) = (stream, raw_upstream.take()) else {
                    return Err(PgError::Client(CodecError::malformed(
                        "SSLRequest",
                        "sent again",
                    )));
                };
                let agreed = match upstream::ask_tls(&mut raw).await {
                    Ok(a) => a,
                    Err(e) => {
                        let m = format!("interceptor: {e}");
                        let _ = tcp
                            .write_all(&codec::error_response("FATAL", "08001", &m))
                            .await;
                        return Err(e);
                    }
                };
                if agreed {
                    tcp.write_all(b"S").await.map_err(PgError::ClientIo)?;
                    // Nothing was read past the SSLRequest, so no plaintext
                    // sent ahead of the handshake is taken for TLS data.
                    stream = upstream::accept_tls(shared, dst, tcp, false).await?;
                } else {
                    tcp.write_all(b"N").await.map_err(PgError::ClientIo)?;
                    stream = Stream::Plain(tcp);
                }
                server =
                    Some(server_leg(shared, dst, &mut stream, raw, agreed, &mut tls_note).await?);
            }
            Startup::GssEnc => {
                stream.write_all(b"N").await.map_err(PgError::ClientIo)?;
                stream.flush().await.map_err(PgError::ClientIo)?;
            }
            Startup::Cancel { key } => {
                let server = match (server, raw_upstream) {
                    (Some(s), _) => s,
                    (None, Some(raw)) => Stream::Plain(raw),
                    (None, None) => return Ok(Opening::Closed),
                };
                return Ok(Opening::Cancel {
                    key: key.to_vec(),
                    server,
                });
            }
            Startup::Message { .. } => {
                let server = match (server, raw_upstream) {
                    (Some(s), _) => s,
                    (None, Some(raw)) => Stream::Plain(raw),
                    (None, None) => return Ok(Opening::Closed),
                };
                return Ok(Opening::Startup {
                    client: stream,
                    server,
                    body,
                    tls_note,
                });
            }
        }
    }
    Err(PgError::Client(CodecError::malformed(
        "start-up",
        "too many negotiation requests",
    )))
}

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    let dst = SocketAddr::new(ctx.target.addr, ctx.target.port);
    let mut gate = Gate::new(
        ctx.shared.clone(),
        ctx.id,
        ctx.workload.clone(),
        ctx.target.clone(),
    );
    let opening = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        open_client(&ctx.shared, dst, client, upstream),
    )
    .await
    {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return ended(&mut gate, e).await,
        Err(_) => return ended(&mut gate, PgError::StartupTimeout).await,
    };
    match opening {
        Opening::Closed => "client closed before start-up".into(),
        Opening::Cancel { key, server } => relay_cancel(&ctx, &mut gate, &key, server).await,
        Opening::Startup {
            client,
            server,
            body,
            tls_note,
        } => {
            if let Some(n) = &tls_note {
                gate.note("tls", Some(n), None).await;
            }
            match session(&ctx, &mut gate, dst, client, server, &body).await {
                Ok(reason) => reason,
                Err(e) => ended(&mut gate, e).await,
            }
        }
    }
}

/// Logs and records why a session ended abnormally.
async fn ended(gate: &mut Gate, e: PgError) -> String {
    let reason = e.to_string();
    match &e {
        PgError::Client(_)
        | PgError::Server(_)
        | PgError::Unexpected(_)
        | PgError::Budget(_)
        | PgError::StartupTimeout => {
            warn!(error = %reason, "ending session");
            gate.note("protocol_error", None, Some(&reason)).await;
        }
        PgError::Record(_) => warn!(error = %reason, "ending session"),
        _ => debug!(error = %reason, "session ended"),
    }
    reason
}

async fn relay_cancel(
    ctx: &SessionCtx,
    gate: &mut Gate,
    key: &[u8],
    mut upstream: Stream,
) -> String {
    let target = lock(cancel_keys()).get(key).copied();
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut body = codec::CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(key);
    let packet = codec::startup_packet(&body);
    let dst = SocketAddr::new(ctx.target.addr, ctx.target.port);
    let result = match target {
        Some(t) if t.addr != dst => {
            match crate::proxy::upstream::connect(
                t.addr,
                ctx.shared.config.socket_mark,
                ctx.shared.config.upstream_connect_timeout,
            )
            .await
            {
                Ok(mut s) => s.write_all(&packet).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        _ => async {
            upstream.write_all(&packet).await?;
            upstream.flush().await
        }
        .await
        .map_err(|e| e.to_string()),
    };
    let text = match target {
        Some(t) => format!(
            "CancelRequest for backend pid {pid} of session {}",
            t.session
        ),
        None => {
            format!("CancelRequest for backend pid {pid} (key not issued through this interceptor)")
        }
    };
    gate.note(
        "cancel",
        Some(&text),
        result.as_ref().err().map(String::as_str),
    )
    .await;
    info!(pid, found = target.is_some(), "cancel request relayed");
    match result {
        Ok(()) => "cancel request relayed".into(),
        Err(e) => format!("cancel request not relayed: {e}"),
    }
}

// ---------------------------------------------------------------- session

async fn write_client(client: &mut Stream, bytes: &[u8]) -> Result<(), PgError> {
    client.write_all(bytes).await.map_err(PgError::ClientIo)?;
    client.flush().await.map_err(PgError::ClientIo)
}

/// Tells the client why its session ends (best effort).
async fn fatal(client: &mut Stream, code: &str, message: &str) {
    let _ = write_client(client, &codec::error_response("FATAL", code, message)).await;
}

async fn session(
    ctx: &SessionCtx,
    gate: &mut Gate,
    dst: SocketAddr,
    client: Stream,
    mut server: Stream,
    startup: &[u8],
) -> Result<String, PgError> {
    let max = ctx.shared.config.limits.max_message_bytes;
    let (user, database) = match codec::decode_startup(startup) {
        Ok(s) => {
            let user = s.param("user").map(|u| u.into_owned());
            let db = s
                .param("database")
                .map(|d| d.into_owned())
                .or_else(|| user.clone());
            (user, db)
        }
        Err(e) => return Err(PgError::Client(e)),
    };
    gate.set_target(user.clone(), database.clone()).await;
    debug!(?user, ?database, tls = client.is_tls(), "start-up");

    let client_tls = client.is_tls();
    if client_tls && !server.is_tls() {
        info!("the client uses TLS but the server does not: the server leg is plain TCP");
    }
    let packet = codec::startup_packet(startup);
    server.write_all(&packet).await.map_err(PgError::ServerIo)?;
    server.flush().await.map_err(PgError::ServerIo)?;
    ctx.bytes
        .up
        .fetch_add(packet.len() as u64, Ordering::Relaxed);

    // A small limit until authenticated; the readers that follow take `max`.
    let auth_max = crate::proxy::limits::auth_limit(max as usize) as u32;
    let mut creader = FrameReader::new(client, auth_max);
    let mut sreader = FrameReader::new(server, auth_max);
    let mut cancel = None;
    let mut lexing = Lexing::postgres();
    match authenticate(
        ctx,
        gate,
        dst,
        &mut creader,
        &mut sreader,
        &mut cancel,
        &mut lexing,
    )
    .await
    {
        Ok(()) => {}
        Err(Auth::Failed(m)) => return Ok(format!("authentication failed: {m}")),
        Err(Auth::ClientGone) => return Ok("client closed during authentication".into()),
        Err(Auth::Error(e)) => {
            let msg = format!("interceptor: {e} (session {})", ctx.id);
            fatal(creader.get_mut(), e.sqlstate(), &msg).await;
            return Err(e);
        }
    }
    info!(
        ?user,
        ?database,
        client_tls,
        server_tls = sreader.get_mut().is_tls(),
        "authenticated"
    );

    let (c, c_rest) = creader.into_parts();
    // A client that leaves while a statement is held withdraws it at once.
    gate.set_client_watch(crate::proxy::watch::ClientWatch::new(c.socket()).ok());
    let (s, s_rest) = sreader.into_parts();
    let (cr, cw) = c.split();
    let (sr, sw) = s.split();
    let pipe = Arc::new(Pipeline::new(lexing));
    let outcomes = pipe.clone();
    let masks = gate.masks().clone();
    let masks_active = !masks.is_empty();
    let blind = Arc::new(if masks.has_column_rules() {
        // Rows with no description cannot be masked column by column.
        RowPlan::withhold_all()
    } else if masks_active {
        RowPlan::blind(&masks)
    } else {
        RowPlan::default()
    });
    let limit = ctx
        .shared
        .policy()
        .result_limit(&gate.workload, &gate.target);
    let canceller = cancel.as_ref().map(|c: &CancelGuard| Canceller {
        shared: ctx.shared.clone(),
        addr: dst,
        key: c.key.clone(),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<Vec<u8>>();

    let mut front = Front {
        input: FrameReader::with_buffered(cr, max, c_rest),
        st: FrontState {
            session_id: ctx.id,
            shared: ctx.shared.clone(),
            gate,
            out: BufWriter::with_capacity(WRITE_BUFFER, sw),
            pipe: pipe.clone(),
            portals: HashMap::new(),
            discarding: false,
            last_described: None,
            masks_active,
            scratch: Vec::new(),
            bytes: ctx.bytes.clone(),
        },
    };
    let mut back = Back {
        input: FrameReader::with_buffered(sr, max, s_rest),
        st: BackState {
            session_id: ctx.id,
            plan: blind.clone(),
            blind,
            plans: HashMap::new(),
            masks,
            masks_active,
            out: BufWriter::with_capacity(WRITE_BUFFER, cw),
            pipe,
            skipping: false,
            copy_plan: None,
            limit,
            result_rows: 0,
            result_bytes: 0,
            limited: None,
            canceller,
            scratch: Vec::new(),
            bytes: ctx.bytes.clone(),
        },
    };

    let front_fut = front.run();
    let back_fut = back.run(stop_rx);
    tokio::pin!(front_fut, back_fut);
    let result = tokio::select! {
        r = &mut front_fut => {
            let goodbye = match &r {
                Ok(_) => Vec::new(),
                Err(e @ (PgError::Client(_) | PgError::Record(_) | PgError::Budget(_))) => codec::error_response(
                    "FATAL",
                    e.sqlstate(),
                    &format!("interceptor: {e} (session {})", ctx.id),
                ),
                Err(_) => Vec::new(),
            };
            let _ = stop_tx.send(goodbye);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut back_fut).await;
            r
        }
        r = &mut back_fut => r,
    };
    outcomes.record_outcomes(&ctx.shared).await;
    drop(cancel);
    result
}

enum Auth {
    Failed(String),
    ClientGone,
    Error(PgError),
}

impl From<PgError> for Auth {
    fn from(e: PgError) -> Self {
        Auth::Error(e)
    }
}

/// Follows a ParameterStatus that changes how the server reads queries.
fn apply_parameter(lexing: &mut Lexing, name: &[u8], value: &[u8]) {
    let value = String::from_utf8_lossy(value);
    match name {
        b"standard_conforming_strings" => {
            lexing.backslash_escapes = !value.eq_ignore_ascii_case("on");
        }
        b"client_encoding" => lexing.encoding = Encoding::from_postgres(&value),
        _ => {}
    }
}

fn frame_bytes(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    codec::message(&mut out, tag, |b| b.extend_from_slice(body));
    out
}

/// Relays the authentication exchange until the server's first
/// ReadyForQuery, noting the lexing settings its ParameterStatus messages
/// report.
#[allow(clippy::too_many_arguments)]
async fn authenticate(
    ctx: &SessionCtx,
    gate: &mut Gate,
    dst: SocketAddr,
    client: &mut FrameReader<Stream>,
    server: &mut FrameReader<Stream>,
    cancel: &mut Option<CancelGuard>,
    lexing: &mut Lexing,
) -> Result<(), Auth> {
    let client_tls = client.get_mut().is_tls();
    let mut sasl_initial = false;
    enum Ev {
        Server(Option<(u8, Vec<u8>)>),
        Client(Option<(u8, Vec<u8>)>),
    }
    loop {
        let ev = tokio::select! {
            biased;
            s = server.next_owned() => Ev::Server(s.map_err(PgError::server)?),
            c = client.next_owned() => Ev::Client(c.map_err(PgError::client)?),
        };
        match ev {
            Ev::Server(None) => {
                return Err(PgError::Unexpected(
                    "the server closed the connection during authentication".into(),
                )
                .into());
            }
            Ev::Server(Some((tag, body))) => {
                ctx.bytes
                    .down
                    .fetch_add(body.len() as u64 + 5, Ordering::Relaxed);
                let mut out = frame_bytes(tag, &body);
                match tag {
                    b'R' => {
                        let code = codec::auth_code(&body).map_err(PgError::server)?;
                        if code == 10 {
                            sasl_initial = true;
                            if client_tls {
                                let mechs =
                                    codec::sasl_mechanisms(&body).map_err(PgError::server)?;
                                let kept: Vec<&[u8]> = mechs
                                    .iter()
                                    .copied()
                                    .filter(|m| !m.ends_with(b"-PLUS"))
                                    .collect();
                                if kept.len() != mechs.len() && !kept.is_empty() {
                                    debug!("SCRAM channel binding struck from the server's offer");
                                    out = codec::auth_sasl(&kept);
                                }
                            }
                        }
                    }
                    b'S' => {
                        let (name, value) =
                            codec::parameter_status(&body).map_err(PgError::server)?;
                        apply_parameter(lexing, name, value);
                    }
                    b'K' => {
                        let key = codec::backend_key(&body).map_err(PgError::server)?;
                        *cancel = Some(CancelGuard::register(
                            key,
                            CancelTarget {
                                addr: dst,
                                session: ctx.id,
                            },
                        ));
                    }
                    b'E' => {
                        write_client(client.get_mut(), &out).await?;
                        let fields = codec::error_fields(&body).map_err(PgError::server)?;
                        let m = codec::error_field(&fields, b'M')
                            .unwrap_or_default()
                            .into_owned();
                        gate.note("auth_error", None, Some(&m)).await;
                        return Err(Auth::Failed(m));
                    }
                    _ => {}
                }
                write_client(client.get_mut(), &out).await?;
                if tag == b'Z' {
                    return Ok(());
                }
            }
            Ev::Client(None) | Ev::Client(Some((b'X', _))) => return Err(Auth::ClientGone),
            Ev::Client(Some((tag, body))) => {
                ctx.bytes
                    .up
                    .fetch_add(body.len() as u64 + 5, Ordering::Relaxed);
                if tag == b'p' && sasl_initial {
                    sasl_initial = false;
                    let (_, data) = codec::decode_sasl_initial(&body).map_err(PgError::client)?;
                    let y_flag = data.is_some_and(|d| d.starts_with(b"y,"));
                    if y_flag && client_tls && server.get_mut().is_tls() {
                        // The client supports channel binding but was not
                        // offered it (it cannot cross the TLS terminated
                        // here); a server on TLS refuses that as a
                        // downgrade. The server leg is never dropped to
                        // plain text for it: the client is told how to
                        // connect instead.
                        let m = format!(
                            "interceptor: SCRAM channel binding cannot work through the interceptor, which terminates TLS; connect with channel_binding=disable, or let the interceptor log in for you (session {})",
                            ctx.id
                        );
                        write_client(
                            client.get_mut(),
                            &codec::error_response("FATAL", "28000", &m),
                        )
                        .await?;
                        gate.note("auth_error", None, Some(&m)).await;
                        return Err(Auth::Failed(m));
                    }
                }
                let out = frame_bytes(tag, &body);
                let s = server.get_mut();
                s.write_all(&out).await.map_err(PgError::ServerIo)?;
                s.flush().await.map_err(PgError::ServerIo)?;
            }
        }
    }
}

// ----------------------------------------------------------- shared state

/// A prepared statement as judged at Parse time.
struct StmtInfo {
    text: String,
    /// Declared parameter types.
    param_types: Vec<u32>,
    /// The Bind arguments recorded with the Parse event (the first
    /// execution's, when the client sent them together).
    parse_args: Option<Vec<u8>>,
    /// The settings the server read it under.
    lexing: Lexing,
    label: Option<String>,
    /// The Parse-time decision; `None` for an empty statement.
    decision: Option<Decision>,
    /// Classification error (unparsed statements).
    error: Option<String>,
    classified: Classified,
    /// The event recorded at Parse time stands for the first execution.
    parse_seq: Option<i64>,
    parse_seq_taken: AtomicBool,
}

impl StmtInfo {
    /// The Parse event stands for the first execution when it recorded
    /// that execution's parameters (or there are none); otherwise the
    /// execution gets an event of its own, with its parameters.
    fn claim_parse_seq(&self, args: &[u8]) -> Option<i64> {
        let recorded = match &self.parse_args {
            Some(a) => a.as_slice() == args,
            None => codec::bind_values(args).is_ok_and(|v| v.is_empty()),
        };
        if recorded
            && self.parse_seq.is_some()
            && !self.parse_seq_taken.swap(true, Ordering::Relaxed)
        {
            self.parse_seq
        } else {
            None
        }
    }
}

/// A statement installed by a Parse that may fail: the previous one comes
/// back if it does.
struct Restore {
    name: Vec<u8>,
    new: Arc<StmtInfo>,
    prev: Option<Arc<StmtInfo>>,
}

/// What the server owes for each message sent, in wire order.
enum Pending {
    /// A simple Query (or FunctionCall): replies up to ReadyForQuery.
    Query {
        seqs: Vec<i64>,
        next: usize,
        started: Instant,
        /// Set when the query was refused and a placeholder sent instead.
        denial: Option<String>,
        /// Its statements (for masking by lineage and withholding error
        /// texts); `None` for what the proxy sent itself.
        classified: Option<Classified>,
    },
    Parse {
        denial: Option<String>,
        restore: Option<Restore>,
    },
    Bind,
    /// `injected`: sent by the proxy to learn a portal's row description
    /// for masking; its reply is not forwarded.
    Describe {
        injected: bool,
        /// The prepared statement described (directly or through its
        /// portal); `None` when unknown.
        stmt: Option<Arc<StmtInfo>>,
    },
    Execute {
        seq: Option<i64>,
        started: Instant,
        stmt: Option<Arc<StmtInfo>>,
    },
    Close,
    Sync,
}

struct Pipeline {
    pending: Mutex<VecDeque<Pending>>,
    statements: Mutex<HashMap<Vec<u8>, Arc<StmtInfo>>>,
    /// The server is in COPY FROM STDIN: it ignores Sync (and Flush).
    copy_in: AtomicBool,
    /// Outcomes noted by the server loop, not yet handed to the recorder.
    outcomes: Mutex<Vec<EventOutcome>>,
    /// How the server reads query text, as its ParameterStatus messages
    /// say (`standard_conforming_strings`, `client_encoding`).
    lexing: Mutex<Lexing>,
    /// Signalled when the server loop has relayed a ReadyForQuery.
    ready: Notify,
}

/// Whether the lexing settings known here are the ones the server will
/// read the next statement under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Nothing that could change them is in flight.
    Yes,
    /// A statement that could change them is in flight, and a Sync (or its
    /// own ReadyForQuery) will report the change: wait for it.
    Wait,
    /// A statement that could change them is in flight in a pipeline with
    /// no Sync after it yet: the server would read the next statement under
    /// settings it has not reported.
    Never,
}

impl Pipeline {
    fn new(lexing: Lexing) -> Pipeline {
        Pipeline {
            pending: Mutex::default(),
            statements: Mutex::default(),
            copy_in: AtomicBool::new(false),
            outcomes: Mutex::default(),
            lexing: Mutex::new(lexing),
            ready: Notify::new(),
        }
    }

    fn push(&self, p: Pending) {
        lock(&self.pending).push_back(p);
    }

    fn lexing(&self) -> Lexing {
        *lock(&self.lexing)
    }

    /// Any statement the server has not finished (through its
    /// ReadyForQuery) may run code that changes the session's settings.
    fn settled(&self) -> Settled {
        let mut running = false;
        let mut unsynced = false;
        for p in lock(&self.pending).iter() {
            match p {
                // A simple Query ends with its own ReadyForQuery.
                Pending::Query { .. } => {
                    running = true;
                    unsynced = false;
                }
                Pending::Execute { .. } => {
                    running = true;
                    unsynced = true;
                }
                Pending::Sync => unsynced = false,
                _ => {}
            }
        }
        match (running, unsynced) {
            (false, _) => Settled::Yes,
            (true, false) => Settled::Wait,
            (true, true) => Settled::Never,
        }
    }

    fn has_outcomes(&self) -> bool {
        !lock(&self.outcomes).is_empty()
    }

    /// Hands the noted outcomes to the recorder (not waiting for a commit).
    async fn record_outcomes(&self, shared: &Shared) {
        let outcomes = std::mem::take(&mut *lock(&self.outcomes));
        for o in outcomes {
            if let Err(e) = shared.recorder.enqueue(WriteOp::EventOutcome(o)).await {
                warn!(error = %e, "cannot record a statement's outcome");
            }
        }
    }

    fn restore(&self, r: Restore) {
        let mut st = lock(&self.statements);
        if st.get(&r.name).is_some_and(|cur| Arc::ptr_eq(cur, &r.new)) {
            match r.prev {
                Some(p) => {
                    st.insert(r.name, p);
                }
                None => {
                    st.remove(&r.name);
                }
            }
        }
    }
}

// ------------------------------------------------------------ client side

struct Portal {
    stmt: Option<Arc<StmtInfo>>,
    statement: Vec<u8>,
    /// Its bound parameters, for the record.
    params: Option<serde_json::Value>,
    seq: Option<i64>,
    executed: bool,
}

struct Front<'g> {
    input: FrameReader<BoxRead>,
    st: FrontState<'g>,
}

struct FrontState<'g> {
    session_id: i64,
    shared: Arc<Shared>,
    gate: &'g mut Gate,
    out: BufWriter<BoxWrite>,
    pipe: Arc<Pipeline>,
    portals: HashMap<Vec<u8>, Portal>,
    /// After a refused message of a batch: drop everything up to Sync, as
    /// the server does after an error.
    discarding: bool,
    /// The portal named by the last message sent, if it was Describe.
    last_described: Option<Vec<u8>>,
    masks_active: bool,
    scratch: Vec<u8>,
    bytes: Arc<ByteCounters>,
}

impl Front<'_> {
    async fn run(&mut self) -> Result<String, PgError> {
        loop {
            let waiting = !self.input.has_frame();
            if waiting {
                self.st.out.flush().await.map_err(PgError::ServerIo)?;
            }
            let next = if waiting && self.st.pipe.has_outcomes() {
                tokio::select! {
                    r = self.input.next_and_peek() => r,
                    _ = tokio::time::sleep(OUTCOME_DELAY) => {
                        self.st.pipe.record_outcomes(&self.st.shared).await;
                        continue;
                    }
                }
            } else {
                self.input.next_and_peek().await
            };
            let Some((frame, following)) = next.map_err(PgError::client)? else {
                return Ok("client closed the connection".into());
            };
            self.st
                .bytes
                .up
                .fetch_add(frame.raw.len() as u64, Ordering::Relaxed);
            let msg = codec::decode_frontend(frame).map_err(PgError::client)?;
            if let Some(reason) = self.st.handle(msg, frame, following).await? {
                self.st.out.flush().await.map_err(PgError::ServerIo)?;
                return Ok(reason);
            }
        }
    }
}

impl FrontState<'_> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        self.out.write_all(bytes).await.map_err(PgError::ServerIo)
    }

    /// Handles one client message; `Some(reason)` ends the session.
    async fn handle(
        &mut self,
        msg: Frontend<'_>,
        frame: Frame<'_>,
        following: Option<Frame<'_>>,
    ) -> Result<Option<String>, PgError> {
        match msg {
            Frontend::Query(text) => {
                if !self.discarding {
                    self.query(text, frame.raw).await?;
                }
            }
            Frontend::Parse { name, query, types } => {
                if !self.discarding {
                    // The Bind that follows (drivers send them together):
                    // its parameters are recorded with the statement.
                    let bind = following.and_then(|f| match codec::decode_frontend(f) {
                        Ok(Frontend::Bind {
                            statement, args, ..
                        }) if statement == name => Some(args),
                        _ => None,
                    });
                    self.parse(name, query, types, bind, frame.raw).await?;
                }
            }
            Frontend::Bind {
                portal,
                statement,
                args,
            } => {
                if !self.discarding {
                    self.bind(portal, statement, args, frame.raw).await?;
                }
            }
            Frontend::Execute { portal, .. } => {
                if !self.discarding {
                    self.execute(portal, frame.raw).await?;
                }
            }
            Frontend::Describe { kind, name } => {
                if !self.discarding {
                    let stmt = if kind == b'S' {
                        lock(&self.pipe.statements).get(name).cloned()
                    } else {
                        self.portals.get(name).and_then(|p| p.stmt.clone())
                    };
                    self.pipe.push(Pending::Describe {
                        injected: false,
                        stmt,
                    });
                    self.send(frame.raw).await?;
                    self.last_described = (kind == b'P').then(|| name.to_vec());
                }
            }
            Frontend::Close { kind, name } => {
                if !self.discarding {
                    self.pipe.push(Pending::Close);
                    self.send(frame.raw).await?;
                    self.last_described = None;
                    if kind == b'S' {
                        lock(&self.pipe.statements).remove(name);
                    } else {
                        self.portals.remove(name);
                    }
                }
            }
            Frontend::Sync => {
                self.discarding = false;
                self.last_described = None;
                // During COPY FROM STDIN the server ignores Sync: it
                // owes nothing for it.
                if !self.pipe.copy_in.load(Ordering::Acquire) {
                    self.pipe.push(Pending::Sync);
                }
                self.send(frame.raw).await?;
            }
            Frontend::Flush => {
                if !self.discarding {
                    self.send(frame.raw).await?;
                    self.out.flush().await.map_err(PgError::ServerIo)?;
                }
            }
            Frontend::Terminate => {
                self.send(frame.raw).await?;
                return Ok(Some("client terminated the session".into()));
            }
            Frontend::CopyData => self.send(frame.raw).await?,
            Frontend::CopyDone | Frontend::CopyFail => {
                self.pipe.copy_in.store(false, Ordering::Release);
                self.send(frame.raw).await?;
            }
            Frontend::FunctionCall { oid } => {
                if !self.discarding {
                    self.function_call(oid, frame.raw).await?;
                }
            }
            // Outside authentication the server refuses it itself.
            Frontend::Password => self.send(frame.raw).await?,
        }
        Ok(None)
    }

    /// The settings the server will read `sql` under, waiting for it to
    /// report changes a statement in flight may make. `None` when that
    /// cannot be known (see [`Settled::Never`]).
    async fn lexing_for(&mut self, sql: &[u8]) -> Result<Option<Lexing>, PgError> {
        if Lexing::insensitive(sql, policy::Dialect::Postgres) {
            return Ok(Some(Lexing::postgres()));
        }
        loop {
            let ready = self.pipe.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self.pipe.settled() {
                Settled::Yes => return Ok(Some(self.pipe.lexing())),
                Settled::Never => return Ok(None),
                Settled::Wait => {
                    // What is owed must reach the server for it to answer.
                    self.out.flush().await.map_err(PgError::ServerIo)?;
                    ready.await;
                }
            }
        }
    }

    /// Reads and classifies query bytes as the server will, then judges
    /// them (one op per statement; one unparsed op when they cannot be
    /// read or parsed). Returns the decoded text, the classification and
    /// the judgement (`None` for empty text).
    async fn judge_sql(
        &mut self,
        sql: &[u8],
        kind: &'static str,
        detail: Option<serde_json::Value>,
    ) -> Result<(String, Classified, Option<Judgement>, Lexing), PgError> {
        let lexing = self.lexing_for(sql).await?;
        let (text, classified) = match lexing {
            Some(l) => {
                let text = charset::decode(sql, l.encoding)
                    .map(|t| t.into_owned())
                    .unwrap_or_else(|_| charset::lossy_escaped(sql));
                (text, self.gate.classify(sql, &l))
            }
            None => (
                charset::lossy_escaped(sql),
                Arc::new(Err(policy::SqlError::Mismatch(
                    "sent in a pipeline, with no Sync yet, after a statement that may change how the server reads text (the server reports such changes only at Sync)".into(),
                ))),
            ),
        };
        let lexing = lexing.unwrap_or_else(|| self.pipe.lexing());
        let error: String;
        let ops: Vec<Op<'_>> = match &*classified {
            Ok(stmts) if stmts.is_empty() => {
                return Ok((text, classified.clone(), None, lexing));
            }
            Ok(stmts) => stmts
                .iter()
                .map(|s| Op {
                    detail: detail.clone(),
                    ..sql_op(s, kind, lexing)
                })
                .collect(),
            Err(e) => {
                error = e.to_string();
                vec![Op {
                    operation: Operation::SqlUnparsed {
                        text: &text,
                        error: &error,
                    },
                    kind,
                    text: &text,
                    label: Some("unparsed".into()),
                    shape: None,
                    detail,
                    lexing: Some(lexing),
                }]
            }
        };
        let j = match self.unmaskable_copy(&classified, &lexing) {
            Some(why) => self.refuse_ops(&ops, why).await?,
            None => self.judge_ops(&ops).await?,
        };
        drop(ops);
        Ok((text, classified, Some(j), lexing))
    }

    /// A `COPY … TO STDOUT` whose data could not be masked (binary format,
    /// options the proxy does not read) while masks are active: why.
    fn unmaskable_copy(&self, classified: &Classified, lexing: &Lexing) -> Option<String> {
        if !self.masks_active {
            return None;
        }
        let stmts = classified.as_ref().as_ref().ok()?;
        let scs = !lexing.backslash_escapes;
        stmts
            .iter()
            .filter(|s| s.actions.contains(&policy::sql::Action::CopyToClient))
            .find_map(|s| match mask::copy_statement_format(&s.text, scs) {
                Ok(f) if mask::binary_copy_refused(self.gate.masks(), &f) => {
                    Some(mask::BINARY_COPY_REFUSED.to_string())
                }
                Ok(_) => None,
                Err(e) => Some(format!(
                    "interceptor: the data of this COPY cannot be masked ({e}); use COPY … TO STDOUT with default text or CSV options"
                )),
            })
    }

    /// Records ops as refused by the proxy itself (not by a policy rule)
    /// and returns the refusal.
    async fn refuse_ops(&mut self, ops: &[Op<'_>], why: String) -> Result<Judgement, PgError> {
        if !self.out.buffer().is_empty() {
            self.out.flush().await.map_err(PgError::ServerIo)?;
        }
        self.pipe.record_outcomes(&self.shared).await;
        let decision = Decision {
            verdict: Verdict::Deny,
            rule: None,
            message: Some(why.clone()),
            reason: why.clone(),
        };
        let mut seqs = Vec::with_capacity(ops.len());
        for op in ops {
            seqs.push(self.gate.record_decided(op, &decision).await?);
        }
        Ok(Judgement {
            allowed: false,
            seqs,
            message: format!("{why} (session {})", self.session_id),
            decision,
            withdrawn: false,
        })
    }

    async fn judge_ops(&mut self, ops: &[Op<'_>]) -> Result<Judgement, PgError> {
        // A review may hold for minutes: what was already forwarded must
        // not wait behind it.
        if !self.out.buffer().is_empty() {
            self.out.flush().await.map_err(PgError::ServerIo)?;
        }
        self.pipe.record_outcomes(&self.shared).await;
        let j = self.gate.judge(ops).await?;
        if j.withdrawn {
            return Err(PgError::ClientIo(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the client disconnected while its statement was held; approval withdrawn",
            )));
        }
        Ok(j)
    }

    async fn query(&mut self, sql: &[u8], raw: &[u8]) -> Result<(), PgError> {
        let (_, classified, judged, _) = self.judge_sql(sql, "statement", None).await?;
        match judged {
            Some(j) if !j.allowed => {
                self.pipe.push(Pending::Query {
                    seqs: Vec::new(),
                    next: 0,
                    started: Instant::now(),
                    denial: Some(j.message),
                    classified: None,
                });
                let placeholder = codec::query(&self.placeholder());
                self.send(&placeholder).await?;
            }
            j => {
                self.pipe.push(Pending::Query {
                    seqs: j.map(|j| j.seqs).unwrap_or_default(),
                    next: 0,
                    started: Instant::now(),
                    denial: None,
                    classified: Some(classified),
                });
                self.send(raw).await?;
            }
        }
        self.last_described = None;
        Ok(())
    }

    fn placeholder(&self) -> String {
        format!(
            "{PLACEHOLDER} /* interceptor session {} */",
            self.session_id
        )
    }

    async fn parse(
        &mut self,
        name: &[u8],
        query: &[u8],
        types: &[u8],
        bind: Option<&[u8]>,
        raw: &[u8],
    ) -> Result<(), PgError> {
        let param_types = super::params::types(types);
        let params = bind.and_then(|a| super::params::json(a, &param_types, self.gate.masks()));
        let detail = params.map(|p| serde_json::json!({ "params": p }));
        let (query, classified, judged, lexing) =
            self.judge_sql(query, "statement", detail).await?;
        self.last_described = None;
        if let Some(j) = judged.as_ref().filter(|j| !j.allowed) {
            self.pipe.push(Pending::Parse {
                denial: Some(j.message.clone()),
                restore: None,
            });
            let placeholder = codec::parse(name, &self.placeholder());
            self.send(&placeholder).await?;
            if name.is_empty() {
                // Any Parse of the unnamed statement drops the old one.
                lock(&self.pipe.statements).remove(name);
            }
            self.discarding = true;
            return Ok(());
        }
        let label = match &*classified {
            Ok(s) => s.first().map(|s| s.kind().as_str().to_string()),
            Err(_) => Some("unparsed".to_string()),
        };
        let info = Arc::new(StmtInfo {
            lexing,
            param_types,
            parse_args: bind.map(<[u8]>::to_vec),
            text: query,
            label,
            error: classified.as_ref().as_ref().err().map(|e| e.to_string()),
            classified: classified.clone(),
            parse_seq: judged.as_ref().and_then(|j| j.seqs.first().copied()),
            decision: judged.map(|j| j.decision),
            parse_seq_taken: AtomicBool::new(false),
        });
        let restore = {
            let mut st = lock(&self.pipe.statements);
            if !name.is_empty() && st.len() >= MAX_TRACKED && !st.contains_key(name) {
                // Too many to track: later Executes are recorded as of an
                // unknown statement.
                None
            } else {
                let prev = st.insert(name.to_vec(), info.clone());
                (!name.is_empty() && prev.is_some()).then(|| Restore {
                    name: name.to_vec(),
                    new: info,
                    prev,
                })
            }
        };
        self.pipe.push(Pending::Parse {
            denial: None,
            restore,
        });
        self.send(raw).await
    }

    async fn bind(
        &mut self,
        portal: &[u8],
        statement: &[u8],
        args: &[u8],
        raw: &[u8],
    ) -> Result<(), PgError> {
        let stmt = lock(&self.pipe.statements).get(statement).cloned();
        let seq = stmt.as_ref().and_then(|s| s.claim_parse_seq(args));
        let types = stmt
            .as_ref()
            .map(|s| s.param_types.as_slice())
            .unwrap_or_default();
        let params = super::params::json(args, types, self.gate.masks());
        if self.portals.len() >= MAX_TRACKED && !self.portals.contains_key(portal) {
            self.portals.retain(|k, _| k.is_empty());
        }
        self.portals.insert(
            portal.to_vec(),
            Portal {
                stmt,
                statement: statement.to_vec(),
                params,
                seq,
                executed: false,
            },
        );
        self.pipe.push(Pending::Bind);
        self.last_described = None;
        self.send(raw).await
    }

    async fn execute(&mut self, portal: &[u8], raw: &[u8]) -> Result<(), PgError> {
        let seq = self.execution_seq(portal).await?;
        if self.masks_active && self.last_described.as_deref() != Some(portal) {
            // The row description (formats included) of exactly this
            // portal, so that its DataRows can be masked.
            let stmt = self.portals.get(portal).and_then(|p| p.stmt.clone());
            self.pipe.push(Pending::Describe {
                injected: true,
                stmt,
            });
            self.scratch.clear();
            codec::describe_portal(&mut self.scratch, portal);
            let d = std::mem::take(&mut self.scratch);
            self.send(&d).await?;
            self.scratch = d;
        }
        let stmt = self.portals.get(portal).and_then(|p| p.stmt.clone());
        self.pipe.push(Pending::Execute {
            seq,
            started: Instant::now(),
            stmt,
        });
        self.last_described = None;
        self.send(raw).await
    }

    /// The event of this execution: the Parse event for a statement's
    /// first execution, a new `execute` event (under the Parse-time
    /// decision) for later ones. A portal runs its statement once, so its
    /// further Executes (fetching more rows) add no event.
    async fn execution_seq(&mut self, portal: &[u8]) -> Result<Option<i64>, PgError> {
        let (stmt, statement, params, known) = match self.portals.get_mut(portal) {
            Some(p) if p.executed => return Ok(p.seq),
            Some(p) => {
                p.executed = true;
                if p.seq.is_some() {
                    return Ok(p.seq);
                }
                (p.stmt.clone(), p.statement.clone(), p.params.clone(), true)
            }
            None => (None, Vec::new(), None, false),
        };
        let seq = match &stmt {
            Some(info) => match &info.decision {
                None => None, // empty statement: nothing runs
                Some(decision) => {
                    let mut detail = serde_json::json!({
                        "statement": String::from_utf8_lossy(&statement),
                        "parse_seq": info.parse_seq,
                    });
                    if let Some(p) = params {
                        detail["params"] = p;
                    }
                    let operation = match (&*info.classified, &info.error) {
                        (Ok(s), _) if !s.is_empty() => Operation::Sql(&s[0]),
                        (_, e) => Operation::SqlUnparsed {
                            text: &info.text,
                            error: e.as_deref().unwrap_or(""),
                        },
                    };
                    let op = Op {
                        operation,
                        kind: "execute",
                        text: &info.text,
                        label: info.label.clone(),
                        shape: None,
                        detail: Some(detail),
                        lexing: Some(info.lexing),
                    };
                    self.pipe.record_outcomes(&self.shared).await;
                    Some(self.gate.record_decided(&op, decision).await?)
                }
            },
            None => {
                // A portal or statement made outside the extended protocol
                // (SQL DECLARE CURSOR / PREPARE, judged as such) or unknown
                // to the server (which will say so).
                let text = if known {
                    format!(
                        "EXECUTE of prepared statement \"{}\" (prepared by SQL PREPARE or unknown)",
                        String::from_utf8_lossy(&statement)
                    )
                } else {
                    format!(
                        "EXECUTE of portal \"{}\" (a cursor declared by SQL, or unknown)",
                        String::from_utf8_lossy(portal)
                    )
                };
                let decision = Decision {
                    verdict: Verdict::Allow,
                    rule: None,
                    message: None,
                    reason: "runs a statement created by an earlier judged statement (or fails on the server)".into(),
                };
                let op = Op {
                    operation: Operation::SqlUnparsed {
                        text: &text,
                        error: "",
                    },
                    kind: "execute",
                    text: &text,
                    label: None,
                    shape: None,
                    detail: None,
                    lexing: None,
                };
                self.pipe.record_outcomes(&self.shared).await;
                Some(self.gate.record_decided(&op, &decision).await?)
            }
        };
        if let Some(p) = self.portals.get_mut(portal) {
            p.seq = seq;
        }
        Ok(seq)
    }

    async fn function_call(&mut self, oid: u32, raw: &[u8]) -> Result<(), PgError> {
        // The fast-path interface calls a function by OID, outside SQL:
        // judged as unparsed SQL (never allowed by default).
        let text = format!("FunctionCall (fast-path) of function OID {oid}");
        let op = Op {
            operation: Operation::SqlUnparsed {
                text: &text,
                error: "fast-path function call, not SQL",
            },
            kind: "statement",
            text: &text,
            label: Some("function_call".into()),
            shape: None,
            detail: None,
            lexing: None,
        };
        let j = self.judge_ops(&[op]).await?;
        self.last_described = None;
        if j.allowed {
            self.pipe.push(Pending::Query {
                seqs: j.seqs,
                next: 0,
                started: Instant::now(),
                denial: None,
                classified: None,
            });
            self.send(raw).await
        } else {
            // Answered like a FunctionCall: an error, then ReadyForQuery.
            self.pipe.push(Pending::Query {
                seqs: Vec::new(),
                next: 0,
                started: Instant::now(),
                denial: Some(j.message),
                classified: None,
            });
            let placeholder = codec::query(&self.placeholder());
            self.send(&placeholder).await
        }
    }
}

fn sql_op<'a>(s: &'a SqlStatement, kind: &'static str, lexing: Lexing) -> Op<'a> {
    Op {
        operation: Operation::Sql(s),
        kind,
        text: &s.text,
        label: Some(s.kind().as_str().to_string()),
        shape: None,
        detail: None,
        lexing: Some(lexing),
    }
}

// ------------------------------------------------------------ server side

struct Back {
    input: FrameReader<BoxRead>,
    st: BackState,
}

struct BackState {
    session_id: i64,
    masks: ActiveMasks,
    masks_active: bool,
    out: BufWriter<BoxWrite>,
    pipe: Arc<Pipeline>,
    /// The masking plan of the rows being relayed.
    plan: Arc<RowPlan>,
    /// The plan for rows without a description.
    blind: Arc<RowPlan>,
    /// Plans by RowDescription and statement (a prepared statement
    /// describes the same rows at every execution). The key holds the
    /// classification it was made for, so a freed one cannot be mistaken
    /// for another.
    plans: HashMap<PlanKey, (Option<Classified>, Arc<RowPlan>)>,
    /// After an error in an extended-protocol batch the server skips to
    /// Sync.
    skipping: bool,
    /// The masking of the COPY OUT being relayed (`None`: relayed as is).
    copy_plan: Option<CopyPlan>,
    /// `[[limit]]` on each result, if one applies to this session.
    limit: Option<ResultLimit>,
    /// Rows and bytes of the result being relayed.
    result_rows: u64,
    result_bytes: u64,
    /// Set once the result went past the limit: the client's error text.
    limited: Option<String>,
    /// Where and with what key to cancel the running statement.
    canceller: Option<Canceller>,
    scratch: Vec<u8>,
    bytes: Arc<ByteCounters>,
}

/// A cached row plan: RowDescription bytes, the classification (by
/// address) and the statement's index in it.
type PlanKey = (Vec<u8>, usize, usize);

/// Sends a CancelRequest for this session's backend, on a connection of
/// its own (as a client does).
#[derive(Clone)]
struct Canceller {
    shared: Arc<Shared>,
    addr: SocketAddr,
    key: Vec<u8>,
}

impl Canceller {
    fn cancel(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut body = codec::CANCEL_REQUEST.to_be_bytes().to_vec();
            body.extend_from_slice(&me.key);
            let packet = codec::startup_packet(&body);
            match crate::proxy::upstream::connect(
                me.addr,
                me.shared.config.socket_mark,
                me.shared.config.upstream_connect_timeout,
            )
            .await
            {
                Ok(mut s) => {
                    let _ = s.write_all(&packet).await;
                    let _ = s.flush().await;
                }
                Err(e) => warn!(error = %e, "cannot cancel a statement past its result limit"),
            }
        });
    }
}

/// The stand-in for a statement nothing is known about.
fn unknown_statement() -> &'static SqlStatement {
    static UNKNOWN: OnceLock<SqlStatement> = OnceLock::new();
    UNKNOWN.get_or_init(|| SqlStatement::unknown(""))
}

/// What is known of the statement whose replies are arriving.
enum Current {
    /// A classified statement: the classification and its index.
    Known(Classified, usize),
    /// A statement the classifier could not read (unparsed, run after
    /// approval or by policy), a cursor declared in SQL, or unknown.
    Unknown,
    /// Something the proxy sent itself (a refusal's placeholder).
    Proxy,
}

impl Back {
    async fn run(&mut self, stop: oneshot::Receiver<Vec<u8>>) -> Result<String, PgError> {
        let r = self.relay(stop).await;
        if let Err(e @ (PgError::Server(_) | PgError::Unexpected(_) | PgError::Budget(_))) = &r {
            // Tell the client why its session ends (best effort).
            let m = format!("interceptor: {e} (session {})", self.st.session_id);
            let _ = self
                .st
                .out
                .write_all(&codec::error_response("FATAL", e.sqlstate(), &m))
                .await;
            let _ = self.st.out.flush().await;
        }
        r
    }

    async fn relay(&mut self, mut stop: oneshot::Receiver<Vec<u8>>) -> Result<String, PgError> {
        loop {
            if !self.input.has_frame() {
                self.st.out.flush().await.map_err(PgError::ClientIo)?;
            }
            let next = tokio::select! {
                biased;
                f = self.input.next() => f.map_err(PgError::server)?,
                goodbye = &mut stop => {
                    if let Ok(msg) = goodbye
                        && !msg.is_empty()
                    {
                        let _ = self.st.out.write_all(&msg).await;
                    }
                    let _ = self.st.out.flush().await;
                    return Ok(String::new());
                }
            };
            let Some(frame) = next else {
                self.st.out.flush().await.map_err(PgError::ClientIo)?;
                return Ok("server closed the connection".into());
            };
            self.st
                .bytes
                .down
                .fetch_add(frame.raw.len() as u64, Ordering::Relaxed);
            self.st.handle(frame).await?;
        }
    }
}

/// Which message the server sent while something else was expected.
fn out_of_step(got: u8, expected: Option<&Pending>) -> PgError {
    let exp = match expected {
        None => "nothing",
        Some(Pending::Query { .. }) => "a Query reply",
        Some(Pending::Parse { .. }) => "ParseComplete",
        Some(Pending::Bind) => "BindComplete",
        Some(Pending::Describe { .. }) => "a Describe reply",
        Some(Pending::Execute { .. }) => "an Execute reply",
        Some(Pending::Close) => "CloseComplete",
        Some(Pending::Sync) => "ReadyForQuery",
    };
    PgError::Unexpected(format!(
        "message {:?} from the server while expecting {exp}",
        got as char
    ))
}

impl BackState {
    async fn forward(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        self.out.write_all(bytes).await.map_err(PgError::ClientIo)
    }

    fn reset_plan(&mut self) {
        if self.masks_active {
            self.plan = self.blind.clone();
        }
    }

    /// What is known of the statement the server is answering.
    fn current(&self) -> Current {
        let q = lock(&self.pipe.pending);
        let (classified, index) = match q.front() {
            Some(Pending::Query {
                classified: Some(c),
                next,
                ..
            }) => (c.clone(), *next),
            Some(Pending::Query {
                classified: None, ..
            }) => return Current::Proxy,
            Some(
                Pending::Describe { stmt: Some(s), .. } | Pending::Execute { stmt: Some(s), .. },
            ) => (s.classified.clone(), 0),
            _ => return Current::Unknown,
        };
        match &*classified {
            Ok(stmts) if index < stmts.len() => Current::Known(classified, index),
            _ => Current::Unknown,
        }
    }

    /// Runs `f` on the statement being answered (an unknown one as
    /// [`SqlStatement::unknown`]); `None` for the proxy's own.
    fn with_statement<R>(&self, f: impl FnOnce(Option<&SqlStatement>) -> R) -> R {
        match self.current() {
            Current::Known(c, i) => f(c.as_ref().as_ref().ok().and_then(|s| s.get(i))),
            Current::Unknown => f(Some(unknown_statement())),
            Current::Proxy => f(None),
        }
    }

    fn set_plan(&mut self, desc: &[u8]) -> Result<(), PgError> {
        let current = self.current();
        let (classified, index) = match &current {
            Current::Known(c, i) => (Some(c.clone()), *i),
            _ => (None, usize::MAX),
        };
        let addr = classified.as_ref().map_or(0, |c| Arc::as_ptr(c) as usize);
        let key: PlanKey = (desc.to_vec(), addr, index);
        if let Some((_, p)) = self.plans.get(&key) {
            self.plan = p.clone();
            return Ok(());
        }
        let forced = if self.masks.has_column_rules() {
            let fields = codec::row_description(desc).map_err(PgError::server)?;
            let labels: Vec<std::borrow::Cow<'_, str>> = fields
                .iter()
                .map(|f| String::from_utf8_lossy(f.name))
                .collect();
            let labels: Vec<&str> = labels.iter().map(|l| l.as_ref()).collect();
            self.with_statement(|stmt| self.masks.masked_columns(stmt, &labels))
        } else {
            Vec::new()
        };
        let p = Arc::new(RowPlan::new(desc, &self.masks, &forced).map_err(PgError::server)?);
        if self.plans.len() >= 256 {
            self.plans.clear();
        }
        self.plans.insert(key, (classified, p.clone()));
        self.plan = p;
        Ok(())
    }

    /// Whether the server's texts for the statement being answered must
    /// be withheld (it reads masked columns: a failed cast prints the
    /// value it could not cast).
    fn withhold_texts(&self) -> bool {
        self.masks.has_column_rules()
            && self.with_statement(|s| s.is_some_and(|s| self.masks.touches_masked(s)))
    }

    fn withheld(&self, tag: u8, body: &[u8]) -> Vec<u8> {
        mask::withhold_error(
            tag,
            body,
            &format!(
                "the statement reads masked columns (session {})",
                self.session_id
            ),
        )
    }

    /// Counts one row of the current result; past the limit, asks the
    /// server to stop. Returns whether the row may be relayed.
    fn count_row(&mut self, bytes: usize) -> bool {
        if self.limited.is_some() {
            return false;
        }
        let Some(limit) = &self.limit else {
            return true;
        };
        self.result_rows += 1;
        self.result_bytes += bytes as u64;
        match limit.check(self.result_rows, self.result_bytes) {
            None => true,
            Some(e) => {
                info!(limit = %e, "result limit reached; cancelling the statement");
                self.limited = Some(format!("interceptor: {e} (session {})", self.session_id));
                if let Some(c) = &self.canceller {
                    c.cancel();
                }
                false
            }
        }
    }

    /// The end of a result: counters start again; the limit's refusal, if
    /// it was reached.
    fn end_result(&mut self) -> Option<String> {
        self.result_rows = 0;
        self.result_bytes = 0;
        self.limited.take()
    }

    /// Notes how a statement went. The client loop hands the outcomes to
    /// the recorder right before its next record (one transaction for
    /// both), or after a short idle time.
    fn outcome(&mut self, seq: i64, started: Instant, rows: Option<i64>, error: Option<String>) {
        let error = error.map(|e| self.masks.mask_text(&e).into_owned());
        lock(&self.pipe.outcomes).push(EventOutcome {
            session_id: self.session_id,
            seq,
            duration_us: Some(started.elapsed().as_micros().min(i64::MAX as u128) as i64),
            rows,
            error,
        });
    }

    async fn handle(&mut self, f: Frame<'_>) -> Result<(), PgError> {
        match f.tag {
            b'D' => {
                if !self.count_row(f.raw.len()) {
                    return Ok(());
                }
                if self.plan.is_active() {
                    let mut buf = std::mem::take(&mut self.scratch);
                    let changed = self
                        .plan
                        .mask_row(&self.masks, f.body, &mut buf)
                        .map_err(PgError::server)?;
                    let r = self.forward(if changed { &buf } else { f.raw }).await;
                    self.scratch = buf;
                    return r;
                }
                self.forward(f.raw).await
            }
            b'C' => {
                let rows = codec::tag_rows(codec::command_tag(f.body).map_err(PgError::server)?);
                let done = {
                    let mut q = lock(&self.pipe.pending);
                    match q.front_mut() {
                        Some(Pending::Query {
                            seqs,
                            next,
                            started,
                            ..
                        }) => {
                            let r = seqs.get(*next).map(|s| (*s, *started));
                            *next += 1;
                            *started = Instant::now();
                            r
                        }
                        Some(Pending::Execute { .. }) => match q.pop_front() {
                            Some(Pending::Execute { seq, started, .. }) => {
                                seq.map(|s| (s, started))
                            }
                            _ => None,
                        },
                        other => return Err(out_of_step(f.tag, other.map(|p| &*p))),
                    }
                };
                self.pipe.copy_in.store(false, Ordering::Release);
                self.copy_plan = None;
                self.reset_plan();
                if let Some(refusal) = self.end_result() {
                    if let Some((seq, started)) = done {
                        self.outcome(seq, started, None, Some(refusal.clone()));
                    }
                    let e = codec::error_response("ERROR", "54000", &refusal);
                    return self.forward(&e).await;
                }
                if let Some((seq, started)) = done {
                    self.outcome(seq, started, rows, None);
                }
                self.forward(f.raw).await
            }
            b'T' => {
                if self.masks_active {
                    self.set_plan(f.body)?;
                }
                if self.reply_to_describe(f.tag)? {
                    return Ok(());
                }
                self.forward(f.raw).await
            }
            b'n' => {
                self.reset_plan();
                if self.reply_to_describe(f.tag)? {
                    return Ok(());
                }
                self.forward(f.raw).await
            }
            b't' => {
                {
                    let q = lock(&self.pipe.pending);
                    match q.front() {
                        Some(Pending::Describe {
                            injected: false, ..
                        }) => {}
                        other => return Err(out_of_step(f.tag, other)),
                    }
                }
                self.forward(f.raw).await
            }
            b'1' | b'2' | b'3' => {
                {
                    let mut q = lock(&self.pipe.pending);
                    let ok = matches!(
                        (f.tag, q.front()),
                        (b'1', Some(Pending::Parse { denial: None, .. }))
                            | (b'2', Some(Pending::Bind))
                            | (b'3', Some(Pending::Close))
                    );
                    if !ok {
                        return Err(out_of_step(f.tag, q.front()));
                    }
                    q.pop_front();
                }
                self.forward(f.raw).await
            }
            b'I' => {
                {
                    let mut q = lock(&self.pipe.pending);
                    match q.front() {
                        Some(Pending::Execute { .. }) => {
                            q.pop_front();
                        }
                        Some(Pending::Query { .. }) => {}
                        other => return Err(out_of_step(f.tag, other)),
                    }
                }
                self.reset_plan();
                self.forward(f.raw).await
            }
            b's' => {
                let done = {
                    let mut q = lock(&self.pipe.pending);
                    match q.pop_front() {
                        Some(Pending::Execute { seq, started, .. }) => seq.map(|s| (s, started)),
                        other => return Err(out_of_step(f.tag, other.as_ref())),
                    }
                };
                self.reset_plan();
                if let Some((seq, started)) = done {
                    self.outcome(seq, started, None, None);
                }
                self.forward(f.raw).await
            }
            b'E' => self.error(f).await,
            b'Z' => {
                codec::ready_status(f.body).map_err(PgError::server)?;
                {
                    let mut q = lock(&self.pipe.pending);
                    let skipping = self.skipping;
                    loop {
                        match q.pop_front() {
                            None | Some(Pending::Sync) => break,
                            Some(Pending::Query { .. }) if !skipping => break,
                            Some(Pending::Parse {
                                restore: Some(r), ..
                            }) => self.pipe.restore(r),
                            Some(_) => {}
                        }
                    }
                }
                self.skipping = false;
                self.copy_plan = None;
                self.end_result();
                self.pipe.copy_in.store(false, Ordering::Release);
                self.reset_plan();
                self.forward(f.raw).await?;
                // The lexing settings it reported are now known.
                self.pipe.ready.notify_waiters();
                Ok(())
            }
            b'G' => {
                // COPY FROM STDIN: Syncs the server reads from now until the
                // copy ends are ignored by it.
                self.pipe.copy_in.store(true, Ordering::Release);
                {
                    let mut q = lock(&self.pipe.pending);
                    let mut i = 1;
                    while i < q.len() {
                        if matches!(q.get(i), Some(Pending::Sync)) {
                            q.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                }
                self.forward(f.raw).await
            }
            b'H' => {
                self.end_result();
                self.copy_plan = if self.masks_active {
                    Some(self.copy_plan_for(f.body)?)
                } else {
                    None
                };
                self.forward(f.raw).await
            }
            b'd' => {
                if !self.count_row(f.raw.len()) {
                    return Ok(());
                }
                if let Some(plan) = &mut self.copy_plan {
                    return match plan
                        .mask_copy_data(&self.masks, f.body)
                        .map_err(PgError::server)?
                    {
                        CopyOut::Forward => self.forward(f.raw).await,
                        CopyOut::Replace(m) => self.forward(&m).await,
                    };
                }
                self.forward(f.raw).await
            }
            b'c' => {
                if self.limited.is_some() {
                    // The refusal replaces the end of the copy.
                    return Ok(());
                }
                if let Some(mut plan) = self.copy_plan.take()
                    && let Some(rest) = plan.finish(&self.masks).map_err(PgError::server)?
                {
                    self.forward(&rest).await?;
                }
                self.forward(f.raw).await
            }
            b'N' => {
                if self.masks_active && self.withhold_texts() {
                    let m = self.withheld(b'N', f.body);
                    return self.forward(&m).await;
                }
                if self.masks_active
                    && let Some(m) =
                        mask::mask_error(&self.masks, b'N', f.body).map_err(PgError::server)?
                {
                    return self.forward(&m).await;
                }
                self.forward(f.raw).await
            }
            b'S' => {
                // A setting changed (SET, set_config(), a function): follow
                // the ones that decide how the server reads queries. The
                // client loop reads them only after this statement's
                // ReadyForQuery, which follows.
                let (name, value) = codec::parameter_status(f.body).map_err(PgError::server)?;
                apply_parameter(&mut lock(&self.pipe.lexing), name, value);
                self.forward(f.raw).await
            }
            b'A' => {
                if self.masks_active
                    && let Some(m) =
                        mask::mask_notification(&self.masks, f.body).map_err(PgError::server)?
                {
                    return self.forward(&m).await;
                }
                self.forward(f.raw).await
            }
            _ => self.forward(f.raw).await,
        }
    }

    /// A RowDescription or NoData: if it answers a Describe, pops it;
    /// true when the Describe was ours (the reply is not forwarded).
    fn reply_to_describe(&mut self, tag: u8) -> Result<bool, PgError> {
        let mut q = lock(&self.pipe.pending);
        match q.front() {
            Some(Pending::Describe { injected, .. }) => {
                let injected = *injected;
                q.pop_front();
                Ok(injected)
            }
            Some(Pending::Query { .. }) if tag == b'T' => Ok(false),
            other => Err(out_of_step(tag, other)),
        }
    }

    async fn error(&mut self, f: Frame<'_>) -> Result<(), PgError> {
        let withhold = self.masks_active && self.withhold_texts();
        let fields = codec::error_fields(f.body).map_err(PgError::server)?;
        let severity = codec::error_field(&fields, b'V')
            .or_else(|| codec::error_field(&fields, b'S'))
            .unwrap_or_default()
            .into_owned();
        let message = codec::error_field(&fields, b'M')
            .unwrap_or_default()
            .into_owned();
        let mut denial = None;
        let mut done = None;
        {
            let mut q = lock(&self.pipe.pending);
            match q.front_mut() {
                Some(Pending::Query {
                    seqs,
                    next,
                    started,
                    denial: d,
                    ..
                }) => {
                    denial = d.clone();
                    if d.is_none() {
                        done = seqs.get(*next).map(|s| (*s, *started));
                    }
                }
                // An error at Sync (commit) or one not tied to a message.
                Some(Pending::Sync) | None => {}
                Some(_) => {
                    self.skipping = true;
                    match q.pop_front() {
                        Some(Pending::Parse { denial: d, restore }) => {
                            denial = d;
                            if let Some(r) = restore {
                                self.pipe.restore(r);
                            }
                        }
                        Some(Pending::Execute { seq, started, .. }) => {
                            done = seq.map(|s| (s, started))
                        }
                        _ => {}
                    }
                }
            }
        }
        self.pipe.copy_in.store(false, Ordering::Release);
        self.copy_plan = None;
        self.reset_plan();
        if let Some(refusal) = self.end_result() {
            // The statement was cancelled because its result went past the
            // limit: the client learns that, not the cancellation.
            if let Some((seq, started)) = done {
                self.outcome(seq, started, None, Some(refusal.clone()));
            }
            let e = codec::error_response("ERROR", "54000", &refusal);
            return self.forward(&e).await;
        }
        let message = if withhold {
            "the server's message was withheld: the statement reads masked columns".to_string()
        } else {
            message
        };
        if let Some((seq, started)) = done {
            self.outcome(seq, started, None, Some(message));
        }
        if let Some(d) = denial.filter(|_| severity == "ERROR") {
            // The placeholder's syntax error becomes the refusal.
            let e = codec::error_response("ERROR", "42501", &d);
            return self.forward(&e).await;
        }
        if withhold {
            let m = self.withheld(b'E', f.body);
            return self.forward(&m).await;
        }
        if self.masks_active
            && let Some(m) = mask::mask_error(&self.masks, b'E', f.body).map_err(PgError::server)?
        {
            return self.forward(&m).await;
        }
        self.forward(f.raw).await
    }

    /// The masking of a COPY OUT the server starts (its CopyOutResponse
    /// body): format from the statement, columns masked by its lineage.
    /// The client loop refused, before forwarding, every COPY whose data
    /// could not be masked; one that gets here anyway ends the session.
    fn copy_plan_for(&self, response: &[u8]) -> Result<CopyPlan, PgError> {
        let (_, formats) = codec::copy_response(response).map_err(PgError::server)?;
        let scs = !self.pipe.lexing().backslash_escapes;
        let (format, masked) = self.with_statement(|stmt| {
            let format = match stmt {
                Some(s) if !s.text.is_empty() => {
                    mask::copy_statement_format(&s.text, scs).map_err(|e| e.to_string())
                }
                _ => Err("a COPY of an unknown statement".to_string()),
            };
            let labels = vec![""; formats.len()];
            (format, self.masks.masked_columns(stmt, &labels))
        });
        let format = format
            .map_err(|e| PgError::Unexpected(format!("cannot mask the data of this COPY: {e}")))?;
        CopyPlan::new(format, masked, response).map_err(PgError::server)
    }
}
