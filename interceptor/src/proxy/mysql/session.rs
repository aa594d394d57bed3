//! One MySQL / MariaDB session: the handshake (capabilities reconciled,
//! TLS on each leg, authentication relayed), then the command loop, which
//! judges every statement before it goes upstream and streams the answers
//! back row by row, masking values where the policy says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use policy::sql::Lexing;
use policy::sql::lex::charset;
use policy::{
    ActiveMasks, Decision, LimitExceeded, Operation, ResultLimit, SqlError, SqlStatement,
    StatementKind,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::codec::{
    self, ColumnPlan, ErrPacket, ParamValue, caps, com, errcode, is_terminator, status,
};
use super::error::{CodecError, MysqlError, Side};
use super::lexing::{self, SessionLexing};
use super::relay::{self, MAX_COLUMNS, Relay, SetEnd, err_text};
use super::results::{self, Belongs, End, ResultMap, RowCounter};
use super::stream::{Leg, Read, Stream, read_message, write_message};
use super::upstream;
use crate::proxy::SessionCtx;
use crate::proxy::gate::{Classified, Gate, Judgement, Op};
use crate::record::RecordError;

/// Buffers larger than this are shrunk between commands.
const KEEP_BUFFER: usize = 1 << 20;

/// A prepared statement the server holds for this session.
struct Prepared {
    sql: Arc<str>,
    /// The settings the server read it under.
    lexing: Lexing,
    classified: Classified,
    /// The decision taken when it was prepared (an allow, possibly after
    /// an approval): every execution runs under it.
    decision: Decision,
    params: usize,
    /// Parameter types of the last execution that bound them.
    types: Vec<(u8, u8)>,
    /// Bytes sent per parameter with COM_STMT_SEND_LONG_DATA since the last
    /// execution (`None`: none).
    long_data: Vec<Option<u64>>,
    /// Column definitions of the last execution's result (for cursor
    /// fetches), kept only while masks are active.
    plans: Option<Vec<ColumnPlan>>,
    /// Rows and bytes of the open cursor's result fetched so far (counted
    /// against `[[limit]]`).
    fetched: (u64, u64),
    /// The open cursor's result went past a limit: further fetches get
    /// this error until the statement is executed again.
    limited: Option<LimitExceeded>,
}

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    let mut gate = Gate::new(
        ctx.shared.clone(),
        ctx.id,
        ctx.workload.clone(),
        ctx.target.clone(),
    );
    let mut session = match handshake(&ctx, &mut gate, client, upstream).await {
        Ok(Ok(h)) => Session {
            id: ctx.id,
            gate,
            client: h.client,
            server: h.server,
            caps: h.caps,
            deprecate_eof: h.caps & caps::DEPRECATE_EOF != 0,
            user: h.user,
            database: h.database,
            stmts: HashMap::new(),
            last_stmt: None,
            tainted: false,
            lex: SessionLexing::new(&h.server_version),
            buf: h.buf,
            out: Vec::new(),
            cmd: Vec::with_capacity(1024),
        },
        Ok(Err(reason)) => return reason,
        Err(e) => {
            let reason = e.to_string();
            gate.note("protocol_error", None, Some(&reason)).await;
            return reason;
        }
    };
    // A client that leaves while a statement is held withdraws it at once.
    let watch = crate::proxy::watch::ClientWatch::new(session.client.get_ref().socket()).ok();
    session.gate.set_client_watch(watch);
    match session.serve().await {
        Ok(reason) => reason,
        Err(e) => session.fail(e).await,
    }
}

/// What the connection phase leaves for the command loop.
struct Handshaken {
    client: Leg<Stream>,
    server: Leg<Stream>,
    server_version: String,
    caps: u32,
    user: Option<String>,
    database: Option<String>,
    buf: Vec<u8>,
}

/// The connection phase. `Ok(Err(reason))` is an orderly end (the client
/// left, authentication failed); `Err` is a protocol failure.
async fn handshake(
    ctx: &SessionCtx,
    gate: &mut Gate,
    mut client: TcpStream,
    mut upstream: TcpStream,
) -> Result<Result<Handshaken, String>, MysqlError> {
    // A small limit until authenticated (`set_max` below lifts it).
    let full = ctx.shared.config.limits.max_message_bytes as usize;
    let max = crate::proxy::limits::auth_limit(full);
    let mut buf = Vec::with_capacity(256);

    // The server speaks first.
    let mut useq = 0u8;
    if read_message(&mut upstream, Side::Server, &mut useq, max, &mut buf).await? == Read::Eof {
        return Err(MysqlError::Closed {
            side: Side::Server,
            when: "before its handshake",
        });
    }
    let mut cseq = 0u8;
    if buf.first() == Some(&0xff) {
        // Too many connections, host blocked, ...: the client gets it as is.
        let msg = codec::parse_err(&buf)
            .map(|e| e.message)
            .unwrap_or_default();
        let _ = write_message(&mut client, &mut cseq, &buf).await;
        gate.note(
            "protocol_error",
            None,
            Some(&format!("server refused: {msg}")),
        )
        .await;
        return Ok(Err(format!("server refused the connection: {msg}")));
    }
    let greeting = match codec::parse_greeting(&buf) {
        Ok(g) => g,
        Err(e) => {
            let _ = refuse_raw(
                &mut client,
                &format!("interceptor: bad server handshake: {e}"),
            )
            .await;
            return Err(MysqlError::Codec {
                side: Side::Server,
                source: e,
            });
        }
    };
    let server_caps = greeting.capabilities;
    if server_caps & caps::PROTOCOL_41 == 0 {
        let _ = refuse_raw(
            &mut client,
            "interceptor: the server does not speak protocol 4.1",
        )
        .await;
        return Err(MysqlError::Unsupported(
            "server without CLIENT_PROTOCOL_41".into(),
        ));
    }
    // Offer TLS always (the proxy terminates it); never compression, nor
    // the layout-changing extensions, nor MariaDB's extended capabilities.
    let offered = (server_caps & caps::SUPPORTED) | caps::SSL;
    debug!(server = %greeting.server_version, server_caps = format!("{server_caps:#x}"), ext = ?greeting.mariadb_ext, "server handshake");
    let patched = codec::patch_greeting(&buf, &greeting, offered, 0);
    write_message(&mut client, &mut cseq, &patched)
        .await
        .map_err(MysqlError::io(Side::Client))?;

    // The client answers, perhaps first with an SSLRequest.
    match read_message(&mut client, Side::Client, &mut cseq, max, &mut buf).await {
        Ok(Read::Eof) => {
            return Ok(Err(
                "client closed the connection during the handshake".into()
            ));
        }
        Ok(_) => {}
        Err(e) => {
            // Tell the client why, and close without a reset (its unread
            // bytes would otherwise make the kernel discard our answer).
            if !matches!(e, MysqlError::Io { .. }) {
                let _ =
                    super::send_refusal(&mut client, e.errcode().0, &format!("interceptor: {e}"))
                        .await;
                close_draining(&mut client).await;
            }
            return Err(e);
        }
    }
    let client_tls = codec::is_ssl_request(&buf);
    let mut sni = None;
    let mut client = if client_tls {
        let s = upstream::accept_client_tls(&ctx.shared, ctx.target.addr, client).await?;
        sni = s.sni();
        let mut leg = Leg::new(s, Side::Client, cseq, max, ctx.bytes.clone());
        leg.read_expected(&mut buf, "after its TLS handshake")
            .await?;
        leg
    } else {
        Leg::new(
            Stream::Plain(client),
            Side::Client,
            cseq,
            max,
            ctx.bytes.clone(),
        )
    };
    let resp = match codec::parse_handshake_response(&buf) {
        Ok(r) => r,
        Err(e) => {
            if codec::response_capabilities(&buf).is_ok_and(|c| c & caps::PROTOCOL_41 == 0) {
                let p = codec::err_packet(
                    errcode::NOT_SUPPORTED_AUTH_MODE,
                    Some("08004"),
                    "interceptor: clients without the 4.1 protocol are not supported",
                );
                let _ = client.write(&p).await;
                let _ = client.flush().await;
            }
            return Err(MysqlError::Codec {
                side: Side::Client,
                source: e,
            });
        }
    };
    let negotiated = resp.capabilities & offered & caps::SUPPORTED;
    let server_tls = client_tls && server_caps & caps::SSL != 0;
    let mut server = if server_tls {
        let req = codec::ssl_request(negotiated, resp.max_packet, resp.charset);
        write_message(&mut upstream, &mut useq, &req)
            .await
            .map_err(MysqlError::io(Side::Server))?;
        let (s, note) = match upstream::connect_server_tls(
            &ctx.shared,
            ctx.target.addr,
            sni.as_deref(),
            upstream,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                // The client is on TLS already: tell it why, in its terms.
                let p = codec::err_packet(
                    errcode::UNKNOWN_ERROR,
                    Some("08S01"),
                    &format!("interceptor: {e} (session {})", ctx.id),
                );
                let _ = client.write(&p).await;
                let _ = client.flush().await;
                gate.note("tls", None, Some(&e.to_string())).await;
                return Err(e);
            }
        };
        gate.note("tls", Some(&note), None).await;
        Leg::new(s, Side::Server, useq, max, ctx.bytes.clone())
    } else {
        Leg::new(
            Stream::Plain(upstream),
            Side::Server,
            useq,
            max,
            ctx.bytes.clone(),
        )
    };
    let up_caps = if server_tls {
        negotiated | caps::SSL
    } else {
        negotiated
    };
    debug!(client_caps = format!("{:#x}", resp.capabilities), negotiated = format!("{negotiated:#x}"), client_tls, server_tls, user = %resp.user, "client handshake");
    server
        .write(&codec::patch_handshake_response(&buf, up_caps))
        .await?;
    server.flush().await?;
    gate.set_target(Some(resp.user.clone()), resp.database.clone())
        .await;

    if let Some(err) = auth_exchange(&mut client, &mut server, &mut buf).await? {
        gate.note(
            "auth_error",
            Some(&format!("login as {}", resp.user)),
            Some(&err.message),
        )
        .await;
        return Ok(Err(format!("authentication failed: {}", err.message)));
    }
    client.set_max(full);
    server.set_max(full);
    Ok(Ok(Handshaken {
        client,
        server,
        server_version: greeting.server_version.clone(),
        caps: negotiated,
        user: Some(resp.user),
        database: resp.database,
        buf,
    }))
}

/// Sends a connection-phase ERR (sequence 0, no SQLSTATE) on a raw socket.
async fn refuse_raw(client: &mut TcpStream, message: &str) -> std::io::Result<()> {
    let mut seq = 0;
    write_message(
        client,
        &mut seq,
        &codec::err_packet(errcode::ACCESS_DENIED, None, message),
    )
    .await
    .map(|_| ())
}

/// Half-closes a raw client socket and reads what it still sends (bounded
/// in time and size), so that closing it sends a FIN, not a reset.
async fn close_draining(client: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = 1usize << 20;
    let drain = async {
        while left > 0 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// Relays an authentication exchange until the server's OK (`None`) or ERR.
///
/// Who speaks next follows from what the server sent: after an auth switch
/// or more-data request the client answers, except after caching_sha2's
/// "fast auth succeeded" (0x01 0x03), which the server follows with its OK.
async fn auth_exchange<C, S>(
    client: &mut Leg<C>,
    server: &mut Leg<S>,
    buf: &mut Vec<u8>,
) -> Result<Option<ErrPacket>, MysqlError>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        server.read_expected(buf, "during authentication").await?;
        client.write(buf).await?;
        client.flush().await?;
        match buf.first() {
            Some(0x00) => {
                return Ok(None);
            }
            Some(0xff) => {
                return Ok(Some(
                    codec::parse_err(buf).map_err(MysqlError::codec(Side::Server))?,
                ));
            }
            Some(0x01) if buf.as_slice() == [0x01, 0x03] => continue,
            _ => {}
        }
        client.read_expected(buf, "during authentication").await?;
        server.write(buf).await?;
        server.flush().await?;
    }
}

/// Per-statement outcomes of a response with several results.
struct Outcomes<'a> {
    seqs: &'a [i64],
    /// Which statement each result belongs to.
    map: ResultMap,
    rows: i64,
    started: Instant,
}

impl<'a> Outcomes<'a> {
    fn new(seqs: &'a [i64], classified: &Result<Vec<SqlStatement>, SqlError>) -> Outcomes<'a> {
        Outcomes {
            seqs,
            map: ResultMap::new(classified),
            rows: 0,
            started: Instant::now(),
        }
    }

    /// Records the end of one result (`end`: how it ended; `None` for an
    /// ERR). A statement with several results (a CALL's result sets and
    /// its OK) adds them up; results whose statement is unknown add to the
    /// statement where the proxy lost track.
    async fn done(
        &mut self,
        gate: &Gate,
        end: Option<End>,
        rows: Option<i64>,
        error: Option<String>,
        more: bool,
    ) {
        if let Some(r) = rows {
            self.rows += r;
        }
        if let Some(&seq) = self.seqs.get(self.map.index()).or(self.seqs.last()) {
            let rows = (rows.is_some() || self.rows > 0).then_some(self.rows);
            gate.outcome(
                seq,
                Some(self.started.elapsed().as_micros() as i64),
                rows,
                error,
            )
            .await;
        }
        if let Some(end) = end
            && self.map.ended(end, more)
        {
            self.rows = 0;
            self.started = Instant::now();
        }
    }
}

pub(super) struct Session {
    id: i64,
    gate: Gate,
    client: Leg<Stream>,
    server: Leg<Stream>,
    /// Capabilities in force (as sent to the server, without CLIENT_SSL).
    caps: u32,
    deprecate_eof: bool,
    user: Option<String>,
    database: Option<String>,
    stmts: HashMap<u32, Prepared>,
    last_stmt: Option<u32>,
    /// The server's list of warnings and errors may quote values of masked
    /// columns (see [`results::taint_after`]): `SHOW WARNINGS` / `SHOW
    /// ERRORS` messages are withheld and `GET DIAGNOSTICS` is refused.
    tainted: bool,
    /// How the server reads this session's queries.
    lex: SessionLexing,
    /// Server messages.
    buf: Vec<u8>,
    /// Rewritten rows.
    out: Vec<u8>,
    /// The client's command.
    cmd: Vec<u8>,
}

impl Session {
    /// The command loop. Returns the reason of an orderly end.
    async fn serve(&mut self) -> Result<String, MysqlError> {
        loop {
            self.client.seq = 0;
            self.server.seq = 0;
            let mut cmd = std::mem::take(&mut self.cmd);
            let r = self.client.read(&mut cmd).await;
            let r = match r {
                Ok(Read::Eof) => {
                    self.server.shutdown().await;
                    return Ok("closed".into());
                }
                Ok(Read::Message) => self.command(&cmd).await,
                Err(e) => Err(e),
            };
            self.cmd = cmd;
            // A huge message leaves a huge buffer: give it back.
            for b in [&mut self.cmd, &mut self.buf, &mut self.out] {
                if b.capacity() > KEEP_BUFFER {
                    b.clear();
                    b.shrink_to(KEEP_BUFFER);
                }
            }
            match r {
                Ok(true) => {}
                Ok(false) => return Ok("closed".into()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles one command; `false` when the client quit.
    async fn command(&mut self, msg: &[u8]) -> Result<bool, MysqlError> {
        let Some(&cmd) = msg.first() else {
            return Err(MysqlError::Codec {
                side: Side::Client,
                source: CodecError::malformed("command", "empty packet"),
            });
        };
        match cmd {
            com::QUIT => {
                let _ = self.server.write(msg).await;
                let _ = self.server.flush().await;
                self.server.shutdown().await;
                return Ok(false);
            }
            com::QUERY => self.query(msg).await?,
            com::INIT_DB => self.init_db(msg).await?,
            com::FIELD_LIST => self.field_list(msg).await?,
            com::PING | com::STATISTICS | com::SET_OPTION => {
                self.forward(msg).await?;
                self.single_response(None).await?;
            }
            com::RESET_CONNECTION => {
                self.gate
                    .note("command", Some("COM_RESET_CONNECTION"), None)
                    .await;
                self.forward(msg).await?;
                if self.single_response(None).await? {
                    self.stmts.clear();
                    self.last_stmt = None;
                }
                // The session's variables are back to the server's.
                self.lex.changed();
            }
            com::CHANGE_USER => self.change_user(msg).await?,
            com::STMT_PREPARE => self.prepare(msg).await?,
            com::STMT_EXECUTE => self.execute(msg).await?,
            com::STMT_SEND_LONG_DATA => self.long_data(msg).await?,
            com::STMT_CLOSE => {
                let id = self.stmt_id(msg)?;
                if self.stmts.remove(&id).is_some() {
                    self.forward(msg).await?;
                }
            }
            com::STMT_RESET => {
                let id = self.stmt_id(msg)?;
                match self.stmts.get_mut(&id) {
                    Some(st) => {
                        st.long_data.fill(None);
                        self.forward(msg).await?;
                        self.single_response(None).await?;
                    }
                    None => self.unknown_stmt(id, "mysqld_stmt_reset").await?,
                }
            }
            com::STMT_FETCH => self.fetch(msg).await?,
            other => {
                let name = com::name(other);
                self.gate
                    .note(
                        "command",
                        Some(&name),
                        Some("refused: not relayed by the interceptor"),
                    )
                    .await;
                self.send_err(
                    errcode::UNKNOWN_COM,
                    "08S01",
                    &format!(
                        "interceptor: {name} is not supported through the interceptor (session {})",
                        self.id
                    ),
                )
                .await?;
            }
        }
        Ok(true)
    }

    fn stmt_id(&self, msg: &[u8]) -> Result<u32, MysqlError> {
        let id = codec::statement_id(msg).map_err(MysqlError::codec(Side::Client))?;
        // MariaDB's "the statement prepared last" (mariadb_stmt_execute_direct).
        Ok(if id == u32::MAX {
            self.last_stmt.unwrap_or(id)
        } else {
            id
        })
    }

    async fn forward(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        self.server.write(msg).await?;
        self.server.flush().await
    }

    async fn send_err(&mut self, code: u16, state: &str, message: &str) -> Result<(), MysqlError> {
        let p = codec::err_packet(code, Some(state), message);
        self.client.write(&p).await?;
        self.client.flush().await
    }

    async fn unknown_stmt(&mut self, id: u32, what: &str) -> Result<(), MysqlError> {
        self.send_err(
            errcode::UNKNOWN_STMT_HANDLER,
            "HY000",
            &format!(
                "Unknown prepared statement handler ({id}) given to {what} (interceptor session {})",
                self.id
            ),
        )
        .await
    }

    /// Judges through the gate; a recording failure refuses the command
    /// and ends the session (fail closed).
    async fn judge(&mut self, ops: &[Op<'_>]) -> Result<Judgement, MysqlError> {
        match self.gate.judge(ops).await {
            Ok(j) if j.withdrawn => Err(MysqlError::Closed {
                side: Side::Client,
                when: "while its statement was held for approval (withdrawn)",
            }),
            Ok(j) => Ok(j),
            Err(e) => Err(self.record_failed(e).await),
        }
    }

    /// Tells the client its command was not run because recording failed.
    async fn record_failed(&mut self, e: RecordError) -> MysqlError {
        let _ = self
            .send_err(
                errcode::UNKNOWN_ERROR,
                "HY000",
                &format!(
                    "interceptor: cannot record the command, so it was not run: {e} (session {})",
                    self.id
                ),
            )
            .await;
        MysqlError::Record(e)
    }

    async fn deny(&mut self, j: &Judgement) -> Result<(), MysqlError> {
        self.send_err(errcode::SPECIFIC_ACCESS_DENIED, "42000", &j.message)
            .await
    }

    /// The masks to apply, when any.
    fn masks(&self) -> Option<ActiveMasks> {
        let m = self.gate.masks();
        (!m.is_empty()).then(|| m.clone())
    }

    /// The `[[limit]]` bounds for this session's results, from the policy
    /// in force now (a reload applies to the next command).
    fn result_limit(&self) -> Option<ResultLimit> {
        self.gate
            .shared()
            .policy()
            .result_limit(&self.gate.workload, &self.gate.target)
    }

    /// The text replacing server messages that may quote masked values.
    fn withheld(&self) -> String {
        results::withheld_error(self.id)
    }

    /// Refuses (after it was judged and recorded, before it is forwarded) a
    /// text that could copy the server's diagnostics, which may quote
    /// masked values, somewhere the proxy cannot mask them (see
    /// [`results::reads_diagnostics`]). Returns whether it was refused.
    async fn refuse_diagnostics(
        &mut self,
        classified: &Result<Vec<SqlStatement>, SqlError>,
        text: &str,
        seqs: &[i64],
    ) -> Result<bool, MysqlError> {
        if !results::reads_diagnostics(self.gate.masks(), classified, text, self.tainted) {
            return Ok(false);
        }
        let message = format!(
            "interceptor: refused because it can read the server's diagnostics (GET DIAGNOSTICS, EXECUTE), which may quote values of masked columns read by an earlier statement (session {})",
            self.id
        );
        let p = codec::err_packet(errcode::SPECIFIC_ACCESS_DENIED, Some("42000"), &message);
        self.client.write(&p).await?;
        self.client.flush().await?;
        if let Some(&seq) = seqs.first() {
            self.gate.outcome(seq, None, None, err_text(&p)).await;
        }
        Ok(true)
    }

    // -- text protocol -----------------------------------------------------

    /// Reads query bytes as the server will (asking it for its settings
    /// first when they may have changed and the text depends on them) and
    /// classifies them. Returns the text, its classification and the
    /// settings it was read under.
    async fn classify_sql(
        &mut self,
        sql: &[u8],
    ) -> Result<(String, Classified, Lexing), MysqlError> {
        if self.lex.must_read(sql) {
            match lexing::read_settings(&mut self.server, &mut self.buf, self.deprecate_eof).await?
            {
                Ok((mode, charset)) => self.lex.apply(&mode, &charset),
                Err(why) => self.lex.unreadable(why),
            }
        }
        let l = self.lex.lexing;
        let text = charset::decode(sql, l.encoding)
            .map(|t| t.into_owned())
            .unwrap_or_else(|_| charset::lossy_escaped(sql));
        let classified = match &self.lex.unfollowable {
            Some(why) => Arc::new(Err(SqlError::Mismatch(why.clone()))),
            None => {
                let c = self.gate.classify(sql, &l);
                match c
                    .as_ref()
                    .as_ref()
                    .ok()
                    .and_then(|s| lexing::batch_unfollowable(s))
                {
                    Some(why) => Arc::new(Err(SqlError::Mismatch(why))),
                    None => c,
                }
            }
        };
        Ok((text, classified, l))
    }

    /// Notes, after a command ran, that it may have changed the settings.
    fn ran(&mut self, classified: &Result<Vec<SqlStatement>, SqlError>) {
        let may = match classified {
            Ok(stmts) => stmts.iter().any(lexing::may_change_settings),
            Err(_) => true,
        };
        if may {
            self.lex.changed();
        }
    }

    async fn query(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let (text, classified, l) = self.classify_sql(&msg[1..]).await?;
        let err = error_text(&classified);
        let ops = statement_ops(&text, &classified, &err, "statement", None, l);
        let j = self.judge(&ops).await?;
        if !j.allowed {
            return self.deny(&j).await;
        }
        if self.refuse_diagnostics(&classified, &text, &j.seqs).await? {
            return Ok(());
        }
        let use_db = single_use(&classified);
        self.forward(msg).await?;
        let ok = self.results(&j.seqs, false, None, &classified).await?;
        self.ran(&classified);
        if ok && let Some(db) = use_db {
            self.database = Some(db);
            self.gate
                .set_target(self.user.clone(), self.database.clone())
                .await;
        }
        Ok(())
    }

    /// Settings for SQL text the proxy writes itself (identifiers quoted
    /// with backticks, UTF-8).
    fn own_lexing(&self) -> Lexing {
        Lexing {
            server: self.lex.lexing.server,
            ..Lexing::mysql()
        }
    }

    async fn init_db(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let db = String::from_utf8_lossy(&msg[1..]).into_owned();
        let text = format!("USE {}", codec::quote_ident(&db));
        let own = self.own_lexing();
        let classified = self.gate.classify(text.as_bytes(), &own);
        let err = error_text(&classified);
        let ops = statement_ops(
            &text,
            &classified,
            &err,
            "statement",
            Some(json!({"command": "COM_INIT_DB"})),
            own,
        );
        let j = self.judge(&ops).await?;
        if !j.allowed {
            return self.deny(&j).await;
        }
        self.forward(msg).await?;
        if self.single_response(j.seqs.first().copied()).await? {
            self.database = Some(db);
            self.gate
                .set_target(self.user.clone(), self.database.clone())
                .await;
        }
        Ok(())
    }

    async fn field_list(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let rest = &msg[1..];
        let table = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        let text = format!(
            "SHOW COLUMNS FROM {}",
            codec::quote_ident(&String::from_utf8_lossy(table))
        );
        let own = self.own_lexing();
        let classified = self.gate.classify(text.as_bytes(), &own);
        let err = error_text(&classified);
        let ops = statement_ops(
            &text,
            &classified,
            &err,
            "statement",
            Some(json!({"command": "COM_FIELD_LIST"})),
            own,
        );
        let j = self.judge(&ops).await?;
        if !j.allowed {
            return self.deny(&j).await;
        }
        self.forward(msg).await?;
        let started = Instant::now();
        let mut n = 0i64;
        let mut error = None;
        loop {
            self.server
                .read_expected(&mut self.buf, "in the middle of a response")
                .await?;
            if self.buf.first() == Some(&0xff) {
                error = Some(
                    relay::relay_err(&mut self.client, &self.buf, None, self.gate.masks()).await?,
                );
                break;
            }
            self.client.write(&self.buf).await?;
            if is_terminator(&self.buf, self.deprecate_eof) {
                break;
            }
            n += 1;
        }
        self.client.flush().await?;
        if let Some(&seq) = j.seqs.first() {
            self.gate
                .outcome(
                    seq,
                    Some(started.elapsed().as_micros() as i64),
                    Some(n),
                    error,
                )
                .await;
        }
        Ok(())
    }

    /// Relays a one-packet response; records its outcome on `seq`. Returns
    /// whether it was not an ERR.
    async fn single_response(&mut self, seq: Option<i64>) -> Result<bool, MysqlError> {
        let started = Instant::now();
        self.server
            .read_expected(&mut self.buf, "before answering")
            .await?;
        let error = if self.buf.first() == Some(&0xff) {
            Some(relay::relay_err(&mut self.client, &self.buf, None, self.gate.masks()).await?)
        } else {
            self.client.write(&self.buf).await?;
            None
        };
        self.client.flush().await?;
        let ok = error.is_none();
        if let Some(seq) = seq {
            let rows = if self.buf.first() == Some(&0) {
                codec::parse_ok(&self.buf).ok().map(|o| {
                    self.lex.status(o.status);
                    o.affected_rows as i64
                })
            } else {
                None
            };
            self.gate
                .outcome(seq, Some(started.elapsed().as_micros() as i64), rows, error)
                .await;
        }
        Ok(ok)
    }

    /// Relays the results of COM_QUERY or COM_STMT_EXECUTE: OK, ERR,
    /// LOCAL INFILE requests and result sets, following
    /// SERVER_MORE_RESULTS_EXISTS, each masked and limited as the statement
    /// it belongs to requires. Returns whether no ERR came (the proxy's
    /// own limit ERR included).
    async fn results(
        &mut self,
        seqs: &[i64],
        binary: bool,
        stmt: Option<u32>,
        classified: &Classified,
    ) -> Result<bool, MysqlError> {
        // One copy per response: the session is borrowed mutably below.
        let all = self.gate.masks().clone();
        let masks = (!all.is_empty()).then_some(&all);
        let withheld = self.withheld();
        let mut counter = RowCounter::new(self.result_limit());
        let mut outcomes = Outcomes::new(seqs, classified);
        let mut ok = true;
        loop {
            self.server
                .read_expected(&mut self.buf, "before answering")
                .await?;
            let belongs = outcomes.map.belongs();
            let touched = results::touches(&all, classified, belongs);
            let withhold = touched.then_some(withheld.as_str());
            match self.buf.first().copied() {
                None => {
                    return Err(MysqlError::Codec {
                        side: Side::Server,
                        source: CodecError::malformed("response", "empty packet"),
                    });
                }
                Some(0x00) => {
                    let p = codec::parse_ok(&self.buf).map_err(MysqlError::codec(Side::Server))?;
                    self.client.write(&self.buf).await?;
                    self.lex.status(p.status);
                    self.tainted =
                        results::taint_after(self.tainted, &all, classified, belongs, true);
                    let more = p.status & status::MORE_RESULTS_EXISTS != 0;
                    outcomes
                        .done(
                            &self.gate,
                            Some(End::Ok),
                            Some(p.affected_rows as i64),
                            None,
                            more,
                        )
                        .await;
                    if !more {
                        break;
                    }
                }
                Some(0xff) => {
                    let error =
                        relay::relay_err(&mut self.client, &self.buf, withhold, &all).await?;
                    self.tainted =
                        results::taint_after(self.tainted, &all, classified, belongs, false);
                    outcomes
                        .done(&self.gate, None, None, Some(error), false)
                        .await;
                    ok = false;
                    break;
                }
                Some(0xfb) => {
                    self.client.write(&self.buf).await?;
                    self.local_infile().await?;
                }
                Some(_) => {
                    counter.reset();
                    let end = self
                        .result_set(
                            binary,
                            masks,
                            stmt,
                            (classified, belongs),
                            withhold,
                            &mut counter,
                        )
                        .await?;
                    let failed = end.error.is_some();
                    if !failed || end.limited {
                        self.lex.status(end.status);
                    }
                    self.tainted =
                        results::taint_after(self.tainted, &all, classified, belongs, !failed);
                    let more =
                        (!failed || end.limited) && end.status & status::MORE_RESULTS_EXISTS != 0;
                    let set_end = (!failed || end.limited).then_some(End::Set);
                    outcomes
                        .done(&self.gate, set_end, Some(end.rows), end.error, more)
                        .await;
                    if end.limited && more {
                        // The client got its ERR: this response is over for
                        // it; the server's is not.
                        self.drain_results(binary, classified, &mut outcomes, &all)
                            .await?;
                    }
                    if failed {
                        ok = false;
                        break;
                    }
                    if !more {
                        break;
                    }
                }
            }
        }
        self.client.flush().await?;
        Ok(ok)
    }

    /// Reads and discards the rest of a response after a result stopped by
    /// a `[[limit]]`, recording each result's outcome (those statements
    /// ran on the server).
    async fn drain_results(
        &mut self,
        binary: bool,
        classified: &Classified,
        outcomes: &mut Outcomes<'_>,
        all: &ActiveMasks,
    ) -> Result<(), MysqlError> {
        let withheld = self.withheld();
        loop {
            let belongs = outcomes.map.belongs();
            let withhold = results::touches(all, classified, belongs).then_some(withheld.as_str());
            let d = relay::drain_result(
                &mut self.server,
                &mut self.buf,
                self.deprecate_eof,
                binary,
                withhold,
                all,
            )
            .await?;
            if d.end.is_some() {
                self.lex.status(d.status);
            }
            self.tainted =
                results::taint_after(self.tainted, all, classified, belongs, d.end.is_some());
            let more = d.more();
            outcomes
                .done(&self.gate, d.end, d.rows, d.error, more)
                .await;
            if !more {
                return Ok(());
            }
        }
    }

    /// LOAD DATA LOCAL INFILE: the client sends the file's contents, ending
    /// with an empty packet; the server's answer follows.
    async fn local_infile(&mut self) -> Result<(), MysqlError> {
        self.client.flush().await?;
        loop {
            self.client
                .read_expected(&mut self.buf, "during LOAD DATA LOCAL")
                .await?;
            self.server.write(&self.buf).await?;
            if self.buf.is_empty() {
                break;
            }
        }
        self.server.flush().await
    }

    /// Relays one result set whose column count is in `self.buf`.
    /// `of` is the classified text and which of its statements the result
    /// belongs to; `withhold` replaces server error messages.
    async fn result_set(
        &mut self,
        binary: bool,
        masks: Option<&ActiveMasks>,
        stmt: Option<u32>,
        of: (&Classified, Belongs),
        withhold: Option<&str>,
        counter: &mut RowCounter,
    ) -> Result<SetEnd, MysqlError> {
        let count = codec::Cursor::new(&self.buf)
            .lenenc("column count")
            .map_err(MysqlError::codec(Side::Server))?;
        if count == 0 || count > MAX_COLUMNS {
            return Err(MysqlError::Codec {
                side: Side::Server,
                source: CodecError::malformed("column count", count.to_string()),
            });
        }
        self.client.write(&self.buf).await?;
        let mut plans = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..count {
            self.server
                .read_expected(&mut self.buf, "in the middle of a result set")
                .await?;
            if let Some(m) = masks {
                let def =
                    codec::parse_column_def(&self.buf).map_err(MysqlError::codec(Side::Server))?;
                plans.push(ColumnPlan::new(&def, m));
                labels.push(def.name);
            }
            self.client.write(&self.buf).await?;
        }
        if let Some(m) = masks {
            results::plan_result(&mut plans, &labels, m, (&**of.0, of.1), self.tainted);
        }
        if let Some(st) = stmt.and_then(|id| self.stmts.get_mut(&id)) {
            st.plans = masks.map(|_| plans.clone());
            st.fetched = (0, 0);
            st.limited = None;
        }
        if !self.deprecate_eof {
            self.server
                .read_expected(&mut self.buf, "in the middle of a result set")
                .await?;
            if !is_terminator(&self.buf, false) {
                return Err(MysqlError::Codec {
                    side: Side::Server,
                    source: CodecError::malformed("result set", "no EOF after the columns"),
                });
            }
            self.client.write(&self.buf).await?;
            let st = codec::terminator_status(&self.buf, false)
                .map_err(MysqlError::codec(Side::Server))?;
            if binary && st & status::CURSOR_EXISTS != 0 {
                // Rows come with COM_STMT_FETCH.
                return Ok(SetEnd {
                    rows: 0,
                    status: st,
                    error: None,
                    limited: false,
                });
            }
        }
        self.rows(binary, masks, &plans, withhold, counter).await
    }

    /// Relays rows up to the result's terminator (or an ERR, or a limit).
    async fn rows(
        &mut self,
        binary: bool,
        masks: Option<&ActiveMasks>,
        plans: &[ColumnPlan],
        withhold: Option<&str>,
        counter: &mut RowCounter,
    ) -> Result<SetEnd, MysqlError> {
        let r = Relay {
            binary,
            deprecate_eof: self.deprecate_eof,
            masks,
            plans,
            errors: self.gate.masks(),
            withhold,
            session: self.id,
        };
        relay::rows(
            &mut self.client,
            &mut self.server,
            &mut self.buf,
            &mut self.out,
            &r,
            counter,
        )
        .await
    }

    // -- prepared statements -------------------------------------------------

    async fn prepare(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let (text, classified, l) = self.classify_sql(&msg[1..]).await?;
        let sql: Arc<str> = Arc::from(text);
        let err = error_text(&classified);
        let ops = statement_ops(&sql, &classified, &err, "prepare", None, l);
        // Judged (and, for `review`, held) once here; each execution is
        // recorded with this decision and its bound values.
        let j = self.judge(&ops).await?;
        if !j.allowed {
            return self.deny(&j).await;
        }
        let seq = j.seqs.first().copied();
        self.forward(msg).await?;
        let started = Instant::now();
        self.server
            .read_expected(&mut self.buf, "before answering")
            .await?;
        if self.buf.first() == Some(&0xff) {
            // A prepare evaluates nothing, but its message may still quote
            // the statement's parts: withheld like an execution's.
            let withhold =
                results::touches_any(self.gate.masks(), &classified).then(|| self.withheld());
            let masks = self.gate.masks().clone();
            let error =
                relay::relay_err(&mut self.client, &self.buf, withhold.as_deref(), &masks).await?;
            self.client.flush().await?;
            if let Some(seq) = seq {
                self.gate
                    .outcome(
                        seq,
                        Some(started.elapsed().as_micros() as i64),
                        None,
                        Some(error),
                    )
                    .await;
            }
            return Ok(());
        }
        self.client.write(&self.buf).await?;
        let ok = codec::parse_prepare_ok(&self.buf).map_err(MysqlError::codec(Side::Server))?;
        for (n, what) in [(ok.params, "parameter"), (ok.columns, "column")] {
            if n == 0 {
                continue;
            }
            for _ in 0..n {
                self.server
                    .read_expected(&mut self.buf, "in the middle of a prepare response")
                    .await?;
                self.client.write(&self.buf).await?;
            }
            if !self.deprecate_eof {
                self.server
                    .read_expected(&mut self.buf, "in the middle of a prepare response")
                    .await?;
                if !is_terminator(&self.buf, false) {
                    return Err(MysqlError::Codec {
                        side: Side::Server,
                        source: CodecError::malformed(
                            "COM_STMT_PREPARE response",
                            format!("no EOF after the {what} definitions"),
                        ),
                    });
                }
                self.client.write(&self.buf).await?;
            }
        }
        self.client.flush().await?;
        if let Some(seq) = seq {
            self.gate
                .outcome(seq, Some(started.elapsed().as_micros() as i64), None, None)
                .await;
        }
        let params = usize::from(ok.params);
        self.stmts.insert(
            ok.statement_id,
            Prepared {
                sql,
                lexing: l,
                classified,
                decision: j.decision,
                params,
                types: Vec::new(),
                long_data: vec![None; params],
                plans: None,
                fetched: (0, 0),
                limited: None,
            },
        );
        self.last_stmt = Some(ok.statement_id);
        Ok(())
    }

    async fn execute(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let id = self.stmt_id(msg)?;
        let masks = self.gate.masks().clone();
        let Some(st) = self.stmts.get_mut(&id) else {
            return self.unknown_stmt(id, "mysqld_stmt_execute").await;
        };
        let flags: Vec<bool> = st.long_data.iter().map(Option::is_some).collect();
        let exec = codec::parse_execute(msg, st.params, &mut st.types, &flags)
            .map_err(MysqlError::codec(Side::Client))?;
        let long = std::mem::replace(&mut st.long_data, vec![None; st.params]);
        let params: Vec<Value> = exec
            .params
            .iter()
            .zip(long.iter().chain(std::iter::repeat(&None)))
            .map(|(p, l)| param_json(p, *l, &masks))
            .collect();
        let sql = st.sql.clone();
        let l = st.lexing;
        let classified = st.classified.clone();
        let err = error_text(&classified);
        let detail = json!({"statement_id": id, "params": params});
        let decision = st.decision.clone();
        let ops = statement_ops(&sql, &classified, &err, "execute", Some(detail), l);
        let Some(seqs) = self.record_execution(&ops, &decision).await? else {
            return Ok(());
        };
        if self.refuse_diagnostics(&classified, &sql, &seqs).await? {
            return Ok(());
        }
        self.forward(msg).await?;
        self.results(&seqs, true, Some(id), &classified).await?;
        self.ran(&classified);
        Ok(())
    }

    /// Records one execution of a prepared statement before it runs, under
    /// the decision taken when it was prepared (no new decision, no new
    /// approval). `None`: refused (the client has its ERR).
    async fn record_execution(
        &mut self,
        ops: &[Op<'_>],
        decision: &Decision,
    ) -> Result<Option<Vec<i64>>, MysqlError> {
        let mut seqs = Vec::with_capacity(ops.len());
        for op in ops {
            match self.gate.record_decided(op, decision).await {
                Ok(s) => seqs.push(s),
                Err(e) => return Err(self.record_failed(e).await),
            }
        }
        Ok(Some(seqs))
    }

    async fn long_data(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let id = self.stmt_id(msg)?;
        let param = codec::Cursor::new(msg.get(5..).unwrap_or_default())
            .u16("COM_STMT_SEND_LONG_DATA")
            .map_err(MysqlError::codec(Side::Client))?;
        let Some(st) = self.stmts.get_mut(&id) else {
            // No response is expected; the execution will be refused.
            return Ok(());
        };
        if let Some(slot) = st.long_data.get_mut(usize::from(param)) {
            *slot = Some(slot.unwrap_or(0) + msg.len().saturating_sub(7) as u64);
        }
        self.forward(msg).await
    }

    /// COM_STMT_FETCH: the next rows of an open cursor, masked with the
    /// plans of the execution that opened it, and counted against the
    /// `[[limit]]` across fetches (a cursor's rows are one result).
    async fn fetch(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let id = self.stmt_id(msg)?;
        let Some(st) = self.stmts.get(&id) else {
            return self.unknown_stmt(id, "mysqld_stmt_fetch").await;
        };
        let masks = self.masks();
        let plans = st.plans.clone().unwrap_or_default();
        let classified = st.classified.clone();
        let (rows, bytes) = st.fetched;
        if let Some(e) = st.limited.clone() {
            let p = results::limit_err(&e, self.id);
            self.client.write(&p).await?;
            return self.client.flush().await;
        }
        if masks.is_some() && plans.is_empty() {
            // Masks became active after the cursor was opened: the rows
            // cannot be decoded, so they are not relayed unmasked.
            return self
                .send_err(
                    errcode::UNKNOWN_ERROR,
                    "HY000",
                    &format!(
                        "interceptor: cannot mask this cursor's rows; execute the statement again (session {})",
                        self.id
                    ),
                )
                .await;
        }
        self.forward(msg).await?;
        let withhold = results::touches(
            self.gate.masks(),
            &classified,
            ResultMap::new(&classified).belongs(),
        )
        .then(|| self.withheld());
        let mut counter = RowCounter::resume(self.result_limit(), rows, bytes);
        let r = self
            .rows(
                true,
                masks.as_ref(),
                &plans,
                withhold.as_deref(),
                &mut counter,
            )
            .await;
        self.client.flush().await?;
        let end = r?;
        if let Some(st) = self.stmts.get_mut(&id) {
            st.fetched = (counter.rows, counter.bytes);
            if end.limited {
                st.limited = counter.exceeded();
            }
        }
        Ok(())
    }

    // -- connection ------------------------------------------------------------

    async fn change_user(&mut self, msg: &[u8]) -> Result<(), MysqlError> {
        let cu =
            codec::parse_change_user(msg, self.caps).map_err(MysqlError::codec(Side::Client))?;
        let text = format!(
            "change user to {}{}",
            cu.user,
            cu.database
                .as_deref()
                .map(|d| format!(" (database {d})"))
                .unwrap_or_default()
        );
        let old = self.gate.target.clone();
        self.gate.target.user = Some(cu.user.clone());
        self.gate.target.database = cu.database.clone();
        let op = Op {
            operation: Operation::Connect,
            kind: "connect",
            text: &text,
            label: None,
            shape: Some(format!("change user to {}", cu.user)),
            detail: Some(
                json!({"command": "COM_CHANGE_USER", "user": cu.user, "database": cu.database}),
            ),
            lexing: None,
        };
        let j = self.judge(&[op]).await;
        self.gate.target = old;
        let j = j?;
        if !j.allowed {
            return self
                .send_err(errcode::ACCESS_DENIED, "28000", &j.message)
                .await;
        }
        self.forward(msg).await?;
        // The server deallocates prepared statements either way, and the
        // session's variables start again from the server's.
        self.stmts.clear();
        self.last_stmt = None;
        self.lex.changed();
        match auth_exchange(&mut self.client, &mut self.server, &mut self.buf).await? {
            None => {
                self.user = Some(cu.user);
                self.database = cu.database;
                self.gate
                    .set_target(self.user.clone(), self.database.clone())
                    .await;
            }
            Some(err) => {
                if let Some(&seq) = j.seqs.first() {
                    self.gate.outcome(seq, None, None, Some(err.message)).await;
                }
            }
        }
        Ok(())
    }

    /// Ends the session after a protocol failure: records the reason and,
    /// when the server side failed, tells the client.
    async fn fail(&mut self, e: MysqlError) -> String {
        let reason = e.to_string();
        match &e {
            MysqlError::Record(_) => {}
            MysqlError::Io {
                side: Side::Client, ..
            }
            | MysqlError::Closed {
                side: Side::Client, ..
            } => {}
            _ => {
                let (code, state) = e.errcode();
                let _ = self
                    .send_err(
                        code,
                        state,
                        &format!(
                            "interceptor: ending the session: {reason} (session {})",
                            self.id
                        ),
                    )
                    .await;
            }
        }
        warn!(error = %reason, "mysql session failed");
        self.gate.note("protocol_error", None, Some(&reason)).await;
        self.server.shutdown().await;
        self.client.shutdown().await;
        reason
    }
}

/// The classifier's error, rendered once.
fn error_text(c: &Result<Vec<SqlStatement>, SqlError>) -> String {
    match c {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// One op per statement of a classified text (or one unparsed op).
fn statement_ops<'a>(
    text: &'a str,
    classified: &'a Result<Vec<SqlStatement>, SqlError>,
    err: &'a str,
    kind: &'static str,
    detail: Option<Value>,
    lexing: Lexing,
) -> Vec<Op<'a>> {
    match classified {
        Ok(stmts) => stmts
            .iter()
            .map(|s| Op {
                operation: Operation::Sql(s),
                kind,
                text: &s.text,
                label: Some(s.kind().to_string()),
                shape: None,
                detail: detail.clone(),
                lexing: Some(lexing),
            })
            .collect(),
        Err(_) => vec![Op {
            operation: Operation::SqlUnparsed { text, error: err },
            kind,
            text,
            label: None,
            shape: None,
            detail,
            lexing: Some(lexing),
        }],
    }
}

/// The database of a lone `USE db` statement.
fn single_use(c: &Result<Vec<SqlStatement>, SqlError>) -> Option<String> {
    let [s] = c.as_ref().ok()?.as_slice() else {
        return None;
    };
    if s.kind() != StatementKind::Use {
        return None;
    }
    let rest = s.text.trim().get(3..)?.trim().trim_end_matches(';').trim();
    let name = rest
        .strip_prefix('`')
        .and_then(|r| r.strip_suffix('`'))
        .map(|r| r.replace("``", "`"))
        .unwrap_or_else(|| rest.to_string());
    (!name.is_empty()).then_some(name)
}

/// A bound parameter for the record, masked by the detectors.
fn param_json(p: &ParamValue, long: Option<u64>, masks: &ActiveMasks) -> Value {
    match p {
        ParamValue::Null => Value::Null,
        ParamValue::Int(i) => json!(i),
        ParamValue::UInt(u) => json!(u),
        ParamValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        ParamValue::Text(s) => Value::String(masks.mask_text(s).into_owned()),
        ParamValue::Bytes(n) => Value::String(format!("<{n} bytes>")),
        ParamValue::Temporal(s) => Value::String(s.clone()),
        ParamValue::LongData => Value::String(format!("<long data: {} bytes>", long.unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ByteCounters;
    use tokio::io::DuplexStream;

    /// Plays a scripted exchange through `auth_exchange`: `script` lists
    /// (from_server, payload) in order; returns what the proxy decided.
    async fn play(script: Vec<(bool, Vec<u8>)>) -> Option<ErrPacket> {
        let (proxy_c, mut client) = tokio::io::duplex(1 << 16);
        let (proxy_s, mut server) = tokio::io::duplex(1 << 16);
        let counters = Arc::new(ByteCounters::default());
        let mut cleg = Leg::new(proxy_c, Side::Client, 2, 1 << 20, counters.clone());
        let mut sleg = Leg::new(proxy_s, Side::Server, 2, 1 << 20, counters);
        let peers = tokio::spawn(async move {
            // Each side sees sequence ids continue from 2, as after the
            // greeting (0) and the handshake response (1).
            let (mut cseq, mut sseq) = (2u8, 2u8);
            let mut buf = Vec::new();
            for (from_server, payload) in script {
                let (w, wseq, r, rseq, rside): (
                    &mut DuplexStream,
                    &mut u8,
                    &mut DuplexStream,
                    &mut u8,
                    Side,
                ) = if from_server {
                    (&mut server, &mut sseq, &mut client, &mut cseq, Side::Client)
                } else {
                    (&mut client, &mut cseq, &mut server, &mut sseq, Side::Server)
                };
                write_message(w, wseq, &payload).await.unwrap();
                assert_eq!(
                    read_message(r, rside, rseq, 1 << 20, &mut buf)
                        .await
                        .unwrap(),
                    Read::Message
                );
                assert_eq!(buf, payload, "relayed unchanged");
            }
        });
        let mut buf = Vec::new();
        let r = auth_exchange(&mut cleg, &mut sleg, &mut buf).await.unwrap();
        peers.await.unwrap();
        r
    }

    #[tokio::test]
    async fn caching_sha2_full_auth_and_fast_path_are_relayed() {
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"caching_sha2_password\0");
        switch.extend_from_slice(&[7u8; 20]);
        switch.push(0);
        let mut key = vec![0x01];
        key.extend_from_slice(b"-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n");
        let ok = vec![0, 0, 0, 2, 0, 0, 0];
        // Full authentication over plain TCP: RSA public key requested.
        let full = vec![
            (true, switch.clone()),
            (false, vec![0x55; 32]),
            (true, vec![0x01, 0x04]),
            (false, vec![0x02]),
            (true, key),
            (false, vec![0xaa; 256]),
            (true, ok.clone()),
        ];
        assert_eq!(play(full).await, None);
        // Fast path: the server's OK follows "fast auth succeeded" unasked.
        let fast = vec![
            (true, switch),
            (false, vec![0x55; 32]),
            (true, vec![0x01, 0x03]),
            (true, ok),
        ];
        assert_eq!(play(fast).await, None);
        // A refusal ends it with the server's error.
        let denied = vec![(
            true,
            codec::err_packet(1045, Some("28000"), "Access denied"),
        )];
        let e = play(denied).await.unwrap();
        assert_eq!((e.code, e.message.as_str()), (1045, "Access denied"));
    }

    #[test]
    fn use_statements_name_their_database() {
        let c = policy::sql::classify("USE `my``db`", policy::Dialect::Mysql);
        assert_eq!(single_use(&c).as_deref(), Some("my`db"));
        let c = policy::sql::classify("use shop", policy::Dialect::Mysql);
        assert_eq!(single_use(&c).as_deref(), Some("shop"));
        let c = policy::sql::classify("SELECT 1", policy::Dialect::Mysql);
        assert_eq!(single_use(&c), None);
    }
}
