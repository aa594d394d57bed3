//! Buffered, framed I/O on one leg of a session (client or server), with
//! the leg's own sequence ids: the proxy checks every incoming packet's id
//! and numbers what it writes itself, so the two legs may differ (one does
//! TLS and the other not, or a rewritten row needs another packet).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{self, FrameError, Header, MAX_PAYLOAD};
use super::error::{MysqlError, Side};
use crate::proxy::ByteCounters;
use crate::proxy::limits::{self, Held, MemoryBudget, STANDING_BYTES};

/// A leg's transport: plain TCP, or TLS (terminated towards the client,
/// originated towards the server).
pub enum Stream {
    Plain(TcpStream),
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The socket under the stream (TLS or not).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Stream::Plain(t) => t.as_fd(),
            Stream::TlsFromClient(t) => t.get_ref().0.as_fd(),
            Stream::TlsToServer(t) => t.get_ref().0.as_fd(),
        }
    }

    /// The name the client asked for in its TLS handshake (SNI), if any.
    pub fn sni(&self) -> Option<String> {
        match self {
            Stream::TlsFromClient(t) => t.get_ref().1.server_name().map(str::to_string),
            _ => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Read buffer of a leg (what the kernel hands over per read).
const READ_BUF: usize = 16 * 1024;
/// Write buffer of a leg (what is sent per write when streaming rows).
const WRITE_BUF: usize = 32 * 1024;
/// A message buffer holding more than this is given back before the next
/// read into it.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole message is in the buffer.
    Message,
    /// The peer closed the connection cleanly, between messages.
    Eof,
}

/// One leg of a session.
pub struct Leg<S> {
    io: BufStream<S>,
    pub side: Side,
    /// The sequence id of the next packet, read or written.
    pub seq: u8,
    max: usize,
    /// Counts bytes written to this leg.
    written: Arc<ByteCounters>,
    /// What the buffer of the last message read holds of the daemon's
    /// memory budget (until the next read).
    held: Held,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Leg<S> {
    pub fn new(io: S, side: Side, seq: u8, max: usize, counters: Arc<ByteCounters>) -> Leg<S> {
        Leg {
            io: BufStream::with_capacity(READ_BUF, WRITE_BUF, io),
            side,
            seq,
            max,
            written: counters,
            held: Held::default(),
        }
    }

    /// Sets the largest message taken from now on: the connection phase
    /// runs under a small limit
    /// ([`AUTH_MESSAGE_LIMIT`](crate::proxy::limits::AUTH_MESSAGE_LIMIT)),
    /// raised to `limits.max_message_bytes` once authenticated.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Charges this leg's reads to `budget` instead of the daemon's (tests).
    pub fn with_budget(mut self, budget: &'static MemoryBudget) -> Leg<S> {
        self.held = Held::new(budget);
        self
    }

    fn counter(&self) -> &AtomicU64 {
        match self.side {
            Side::Server => &self.written.up,
            Side::Client => &self.written.down,
        }
    }

    /// The stream under the buffers.
    pub fn get_ref(&self) -> &S {
        self.io.get_ref()
    }

    /// Reads one logical message into `buf` (following continuation
    /// packets), checking sequence ids and the size limit.
    pub async fn read(&mut self, buf: &mut Vec<u8>) -> Result<Read, MysqlError> {
        read_into(
            &mut self.io,
            self.side,
            &mut self.seq,
            self.max,
            buf,
            &mut self.held,
        )
        .await
    }

    /// Like [`read`](Self::read), but the peer closing is an error.
    pub async fn read_expected(
        &mut self,
        buf: &mut Vec<u8>,
        when: &'static str,
    ) -> Result<(), MysqlError> {
        match self.read(buf).await? {
            Read::Message => Ok(()),
            Read::Eof => Err(MysqlError::Closed {
                side: self.side,
                when,
            }),
        }
    }

    /// Writes one logical message (into the buffer; see [`flush`](Self::flush)).
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), MysqlError> {
        let n = write_message(&mut self.io, &mut self.seq, payload)
            .await
            .map_err(MysqlError::io(self.side))?;
        self.counter().fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), MysqlError> {
        self.io.flush().await.map_err(MysqlError::io(self.side))
    }

    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// Reads one logical message from `r` (unbuffered callers get exactly the
/// message's bytes consumed, nothing more: the handshake relies on it
/// before a TLS upgrade). The buffer is charged to the daemon's memory
/// budget while the message is read.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    side: Side,
    seq: &mut u8,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Read, MysqlError> {
    read_into(r, side, seq, max, buf, &mut Held::default()).await
}

/// Reads one logical message into `buf`, which grows only as bytes arrive
/// (never to a length the peer announced), charged to `held`.
async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    side: Side,
    seq: &mut u8,
    max: usize,
    buf: &mut Vec<u8>,
    held: &mut Held,
) -> Result<Read, MysqlError> {
    buf.clear();
    if buf.capacity() > KEEP_CAPACITY {
        buf.shrink_to(STANDING_BYTES);
    }
    held.set(buf.capacity());
    let closed = MysqlError::Closed {
        side,
        when: "in the middle of a packet",
    };
    loop {
        let mut h = [0u8; 4];
        // A clean close is only a close before the first byte of a message.
        let first = buf.is_empty();
        let mut got = 0;
        while got < 4 {
            let n = r.read(&mut h[got..]).await.map_err(MysqlError::io(side))?;
            if n == 0 {
                if got == 0 && first {
                    return Ok(Read::Eof);
                }
                return Err(closed);
            }
            got += n;
        }
        let h = Header::parse(h);
        codec::check_header(h, seq, buf.len(), max).map_err(|e| match e {
            FrameError::Sequence { expected, got } => MysqlError::Sequence {
                side,
                expected,
                got,
            },
            FrameError::TooLarge { len } => MysqlError::TooLarge { side, len, max },
        })?;
        let mut left = h.len;
        while left > 0 {
            limits::grow(buf, left, held)
                .map_err(|e| MysqlError::OverBudget { side, source: e })?;
            let n = (&mut *r)
                .take(left as u64)
                .read_buf(buf)
                .await
                .map_err(MysqlError::io(side))?;
            if n == 0 {
                return Err(closed);
            }
            left -= n;
        }
        if h.len < MAX_PAYLOAD {
            return Ok(Read::Message);
        }
    }
}

/// Writes one logical message; returns the bytes written.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: &mut u8,
    payload: &[u8],
) -> std::io::Result<usize> {
    let mut rest = payload;
    let mut total = 0;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        w.write_all(&Header::encode(n, *seq)).await?;
        w.write_all(&rest[..n]).await?;
        *seq = seq.wrapping_add(1);
        total += 4 + n;
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(io: tokio::io::DuplexStream, max: usize) -> Leg<tokio::io::DuplexStream> {
        Leg::new(io, Side::Client, 0, max, Arc::new(ByteCounters::default()))
    }

    #[tokio::test]
    async fn continuation_packets_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = leg(a, 64 << 20);
        let mut r = leg(b, 64 << 20);
        let big: Vec<u8> = (0..(MAX_PAYLOAD * 2 + 10)).map(|i| i as u8).collect();
        let exact = vec![7u8; MAX_PAYLOAD];
        let writer = tokio::spawn(async move {
            w.write(&big).await.unwrap();
            w.write(&exact).await.unwrap();
            w.write(b"").await.unwrap();
            w.flush().await.unwrap();
            w.seq
        });
        let mut buf = Vec::new();
        assert_eq!(r.read(&mut buf).await.unwrap(), Read::Message);
        assert_eq!(buf.len(), MAX_PAYLOAD * 2 + 10);
        assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(r.seq, 3);
        assert_eq!(r.read(&mut buf).await.unwrap(), Read::Message);
        assert_eq!(buf.len(), MAX_PAYLOAD);
        assert_eq!(r.seq, 5, "an exact multiple is followed by an empty packet");
        assert_eq!(r.read(&mut buf).await.unwrap(), Read::Message);
        assert!(buf.is_empty());
        assert_eq!(writer.await.unwrap(), 6);
    }

    #[tokio::test]
    async fn wrong_sequence_and_oversize_and_truncation_are_errors() {
        let (mut a, b) = tokio::io::duplex(4096);
        let mut r = leg(b, 2048);
        a.write_all(&[1, 0, 0, 5, b'x']).await.unwrap();
        let mut buf = Vec::new();
        let e = r.read(&mut buf).await.unwrap_err();
        assert!(
            matches!(
                e,
                MysqlError::Sequence {
                    expected: 0,
                    got: 5,
                    ..
                }
            ),
            "{e}"
        );

        let (mut a, b) = tokio::io::duplex(4096);
        let mut r = leg(b, 2048);
        a.write_all(&[0xff, 0xff, 0x00, 0]).await.unwrap();
        let e = r.read(&mut buf).await.unwrap_err();
        assert!(matches!(e, MysqlError::TooLarge { len: 65535, .. }), "{e}");

        let (mut a, b) = tokio::io::duplex(4096);
        let mut r = leg(b, 2048);
        a.write_all(&[10, 0, 0, 0, 1, 2]).await.unwrap();
        drop(a);
        let e = r.read(&mut buf).await.unwrap_err();
        assert!(matches!(e, MysqlError::Closed { .. }), "{e}");

        let (a, b) = tokio::io::duplex(4096);
        let mut r = leg(b, 2048);
        drop(a);
        assert_eq!(r.read(&mut buf).await.unwrap(), Read::Eof);
    }

    fn budget(limit: usize) -> &'static MemoryBudget {
        Box::leak(Box::new(MemoryBudget::new(limit)))
    }

    /// A peer that sends `bytes` and then stalls.
    fn stalled(bytes: Vec<u8>) -> tokio::io::DuplexStream {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            a.write_all(&bytes).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(a);
        });
        b
    }

    #[tokio::test]
    async fn memory_follows_bytes_received_not_lengths_announced() {
        // A packet header announcing 16 MiB - 1, then 100 bytes, then nothing.
        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend_from_slice(&[b'x'; 100]);
        let b = budget(usize::MAX);
        let mut r = leg(stalled(wire), 64 << 20).with_budget(b);
        let mut buf = Vec::new();
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(200), r.read(&mut buf)).await;
        assert!(pending.is_err(), "the packet is not complete");
        assert!(
            buf.capacity() <= 32 * 1024,
            "{} bytes allocated",
            buf.capacity()
        );

        // The raw reader of the connection phase too.
        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend_from_slice(&[b'x'; 100]);
        let mut raw = stalled(wire);
        let mut buf = Vec::new();
        let mut seq = 0;
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            read_message(&mut raw, Side::Client, &mut seq, 64 << 20, &mut buf),
        )
        .await;
        assert!(pending.is_err());
        assert!(
            buf.capacity() <= 32 * 1024,
            "{} bytes allocated",
            buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_read_past_the_budget_is_out_of_memory() {
        let b = budget(1 << 20);
        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend(vec![b'a'; 800 * 1024]);
        let mut first = leg(stalled(wire), 64 << 20).with_budget(b);
        let mut first_buf = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            first.read(&mut first_buf),
        )
        .await;
        assert!(b.held() >= 700 * 1024, "{}", b.held());

        let mut wire = vec![0xff, 0xff, 0xff, 0];
        wire.extend(vec![b'b'; 800 * 1024]);
        let mut second = leg(stalled(wire), 64 << 20).with_budget(b);
        let mut buf = Vec::new();
        let e = second.read(&mut buf).await.unwrap_err();
        assert!(matches!(e, MysqlError::OverBudget { .. }), "{e}");
        assert_eq!(e.errcode(), (1037, "HY001"));
        assert!(b.held() <= 1 << 20);
        drop((first, second));
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn limit_is_small_until_raised() {
        let mut wire = Vec::new();
        let mut seq = 0;
        write_message(&mut wire, &mut seq, &vec![1u8; 100_000])
            .await
            .unwrap();
        let mut r = leg(
            stalled(wire.clone()),
            crate::proxy::limits::auth_limit(64 << 20),
        );
        let mut buf = Vec::new();
        let e = r.read(&mut buf).await.unwrap_err();
        assert!(matches!(e, MysqlError::TooLarge { .. }), "{e}");
        assert_eq!(e.errcode(), (1153, "08S01"));

        let mut r = leg(stalled(wire), crate::proxy::limits::auth_limit(64 << 20));
        r.set_max(64 << 20);
        assert_eq!(r.read(&mut buf).await.unwrap(), Read::Message);
        assert_eq!(buf.len(), 100_000);
    }
}
