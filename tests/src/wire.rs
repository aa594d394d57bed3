//! Minimal text-protocol clients for PostgreSQL and MySQL/MariaDB that send
//! query bytes exactly as given (no client-side splitting, escaping or
//! re-encoding), for tests that compare what a server does with a byte
//! string against what the classifier says about the same bytes.
//!
//! Only what those tests need: trust / empty-password logins over TCP,
//! simple queries (PostgreSQL `Query`, MySQL `COM_QUERY` with
//! multi-statements), text results.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

fn connect(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A PostgreSQL connection (protocol 3.0, `trust` authentication).
pub struct PgConn {
    s: TcpStream,
}

/// What one simple `Query` did.
#[derive(Debug, Default, Clone)]
pub struct PgResult {
    /// Data rows of every result set, values as (lossy) UTF-8.
    pub rows: Vec<Vec<Option<String>>>,
    /// CommandComplete tags.
    pub tags: Vec<String>,
    /// The ErrorResponse, if any: (SQLSTATE, message).
    pub error: Option<(String, String)>,
}

fn pg_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let code = body[i];
        let end = body[i + 1..]
            .iter()
            .position(|&b| b == 0)
            .map_or(body.len(), |p| i + 1 + p);
        out.push((
            code,
            String::from_utf8_lossy(&body[i + 1..end]).into_owned(),
        ));
        i = end + 1;
    }
    out
}

impl PgConn {
    /// Logs in as `user` to `database`, with extra start-up parameters
    /// (`options`, `client_encoding`, …).
    pub fn connect(port: u16, user: &str, database: &str, params: &[(&str, &str)]) -> Result<Self> {
        let mut c = PgConn { s: connect(port)? };
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", user), ("database", database)]
            .iter()
            .chain(params.iter())
        {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        c.s.write_all(&msg)?;
        loop {
            let (t, b) = c.read()?;
            match t {
                b'R' if b.get(..4) == Some(&[0, 0, 0, 0]) => {}
                b'R' => bail!("PostgreSQL asked for a password"),
                b'E' => bail!("login refused: {:?}", pg_fields(&b)),
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    fn read(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head)?;
        let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if n < 4 {
            bail!("bad message length {n}");
        }
        let mut body = vec![0u8; n - 4];
        self.s.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    /// Sends one simple `Query` with exactly these bytes.
    pub fn query(&mut self, sql: &[u8]) -> Result<PgResult> {
        if sql.contains(&0) {
            bail!("a NUL byte cannot be sent in a Query message");
        }
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql);
        msg.push(0);
        self.s.write_all(&msg)?;
        let mut out = PgResult::default();
        loop {
            let (t, b) = self.read()?;
            match t {
                b'D' => {
                    let n = u16::from_be_bytes([b[0], b[1]]) as usize;
                    let mut i = 2;
                    let mut row = Vec::with_capacity(n);
                    for _ in 0..n {
                        let len = i32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                        i += 4;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = &b[i..i + len as usize];
                            row.push(Some(String::from_utf8_lossy(v).into_owned()));
                            i += len as usize;
                        }
                    }
                    out.rows.push(row);
                }
                b'C' => out
                    .tags
                    .push(String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(&b)).into_owned()),
                b'E' => {
                    let f = pg_fields(&b);
                    let get = |c: u8| {
                        f.iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    out.error = Some((get(b'C'), get(b'M')));
                }
                b'Z' => return Ok(out),
                _ => {}
            }
        }
    }

    /// Like [`query`](Self::query), failing on a server error.
    pub fn query_ok(&mut self, sql: &str) -> Result<PgResult> {
        let r = self.query(sql.as_bytes())?;
        if let Some(e) = &r.error {
            bail!("{sql}: {e:?}");
        }
        Ok(r)
    }
}

/// A MySQL / MariaDB connection: protocol 4.1, multi-statements on, a user
/// without a password, utf8mb4 until told otherwise.
pub struct MyConn {
    s: TcpStream,
    seq: u8,
    /// The handshake's server version string.
    pub server_version: String,
    /// The connection id (`CONNECTION_ID()`).
    pub connection_id: u32,
}

/// One result of a `COM_QUERY` (one per statement that ran).
#[derive(Debug, Clone)]
pub enum MyResult {
    Ok {
        affected: u64,
        status: u16,
    },
    Rows {
        rows: Vec<Vec<Option<Vec<u8>>>>,
        status: u16,
    },
    Err {
        code: u16,
        message: String,
    },
}

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_STATEMENTS: u32 = 0x10000;
const CLIENT_MULTI_RESULTS: u32 = 0x20000;
const CLIENT_PLUGIN_AUTH: u32 = 0x80000;
/// `SERVER_MORE_RESULTS_EXISTS`.
const MORE_RESULTS: u16 = 0x0008;
/// utf8mb4_general_ci.
const UTF8MB4: u8 = 45;

fn lenenc(b: &[u8], i: &mut usize) -> Option<u64> {
    let first = *b.get(*i)?;
    *i += 1;
    let n = match first {
        0..=0xfa => return Some(first as u64),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let mut v = 0u64;
    for k in 0..n {
        v |= (*b.get(*i + k)? as u64) << (8 * k);
    }
    *i += n;
    Some(v)
}

impl MyConn {
    pub fn connect(port: u16, user: &str, database: Option<&str>) -> Result<Self> {
        let mut c = MyConn {
            s: connect(port)?,
            seq: 0,
            server_version: String::new(),
            connection_id: 0,
        };
        let hs = c.read()?;
        if hs.first() != Some(&10) {
            bail!("not a v10 handshake: {hs:?}");
        }
        let end = hs[1..]
            .iter()
            .position(|&b| b == 0)
            .context("handshake version")?
            + 1;
        c.server_version = String::from_utf8_lossy(&hs[1..end]).into_owned();
        let id = hs.get(end + 1..end + 5).context("handshake id")?;
        c.connection_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_STATEMENTS
            | CLIENT_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH;
        if database.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        let mut r = Vec::new();
        r.extend_from_slice(&caps.to_le_bytes());
        r.extend_from_slice(&(16u32 << 20).to_le_bytes());
        r.push(UTF8MB4);
        r.extend_from_slice(&[0u8; 23]);
        r.extend_from_slice(user.as_bytes());
        r.push(0);
        r.push(0); // empty auth response
        if let Some(db) = database {
            r.extend_from_slice(db.as_bytes());
            r.push(0);
        }
        r.extend_from_slice(b"mysql_native_password\0");
        c.write(&r)?;
        loop {
            let p = c.read()?;
            match p.first() {
                Some(0x00) => break,
                // Auth switch: the empty password is empty in every plugin.
                Some(0xfe) => c.write(&[])?,
                Some(0xff) => bail!("login refused: {}", String::from_utf8_lossy(&p[3..])),
                _ => bail!("unexpected packet during login: {p:?}"),
            }
        }
        Ok(c)
    }

    fn read(&mut self) -> Result<Vec<u8>> {
        let mut head = [0u8; 4];
        self.s.read_exact(&mut head)?;
        let n = head[0] as usize | (head[1] as usize) << 8 | (head[2] as usize) << 16;
        self.seq = head[3].wrapping_add(1);
        let mut body = vec![0u8; n];
        self.s.read_exact(&mut body)?;
        if n == 0xff_ffff {
            bail!("packets of 16 MiB are not supported here");
        }
        Ok(body)
    }

    fn write(&mut self, body: &[u8]) -> Result<()> {
        let n = body.len();
        let mut p = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, self.seq];
        p.extend_from_slice(body);
        self.s.write_all(&p)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Sends one `COM_QUERY` with exactly these bytes; returns one result
    /// per statement the server ran (the last may be an error).
    pub fn query(&mut self, sql: &[u8]) -> Result<Vec<MyResult>> {
        self.seq = 0;
        let mut q = vec![0x03];
        q.extend_from_slice(sql);
        self.write(&q)?;
        let mut out = Vec::new();
        loop {
            let p = self.read()?;
            match p.first() {
                Some(0x00) => {
                    let mut i = 1;
                    let affected = lenenc(&p, &mut i).context("OK")?;
                    lenenc(&p, &mut i).context("OK")?;
                    let status = u16::from_le_bytes([p[i], p[i + 1]]);
                    out.push(MyResult::Ok { affected, status });
                    if status & MORE_RESULTS == 0 {
                        return Ok(out);
                    }
                }
                Some(0xff) => {
                    let code = u16::from_le_bytes([p[1], p[2]]);
                    let msg = if p.get(3) == Some(&b'#') {
                        &p[9..]
                    } else {
                        &p[3..]
                    };
                    out.push(MyResult::Err {
                        code,
                        message: String::from_utf8_lossy(msg).into_owned(),
                    });
                    return Ok(out);
                }
                Some(0xfb) => bail!("LOCAL INFILE request"),
                _ => {
                    let mut i = 0;
                    let columns = lenenc(&p, &mut i).context("column count")?;
                    for _ in 0..columns {
                        self.read()?;
                    }
                    let eof = self.read()?;
                    if eof.first() != Some(&0xfe) {
                        bail!("expected EOF after column definitions");
                    }
                    let mut rows = Vec::new();
                    let status = loop {
                        let r = self.read()?;
                        if r.first() == Some(&0xfe) && r.len() < 9 {
                            break u16::from_le_bytes([r[3], r[4]]);
                        }
                        if r.first() == Some(&0xff) {
                            let code = u16::from_le_bytes([r[1], r[2]]);
                            out.push(MyResult::Err {
                                code,
                                message: String::from_utf8_lossy(&r[9.min(r.len())..]).into_owned(),
                            });
                            return Ok(out);
                        }
                        let mut i = 0;
                        let mut row = Vec::with_capacity(columns as usize);
                        for _ in 0..columns {
                            if r.get(i) == Some(&0xfb) {
                                i += 1;
                                row.push(None);
                            } else {
                                let n = lenenc(&r, &mut i).context("row value")? as usize;
                                row.push(Some(r[i..i + n].to_vec()));
                                i += n;
                            }
                        }
                        rows.push(row);
                    };
                    out.push(MyResult::Rows { rows, status });
                    if status & MORE_RESULTS == 0 {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Like [`query`](Self::query) for text, failing on a server error;
    /// returns the rows of the last result set as (lossy) UTF-8.
    pub fn query_ok(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        for r in self.query(sql.as_bytes())? {
            match r {
                MyResult::Err { code, message } => bail!("{sql}: error {code}: {message}"),
                MyResult::Rows { rows: r, .. } => {
                    rows = r
                        .into_iter()
                        .map(|row| {
                            row.into_iter()
                                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                                .collect()
                        })
                        .collect()
                }
                MyResult::Ok { .. } => {}
            }
        }
        Ok(rows)
    }
}
