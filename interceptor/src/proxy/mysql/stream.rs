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

/// A leg's transport: plain TCP, or TLS (terminated towards the client,
/// originated towards the server).
pub enum Stream {
    Plain(TcpStream),
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
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

const BUF: usize = 64 * 1024;

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
}

impl<S: AsyncRead + AsyncWrite + Unpin> Leg<S> {
    pub fn new(io: S, side: Side, seq: u8, max: usize, counters: Arc<ByteCounters>) -> Leg<S> {
        Leg {
            io: BufStream::with_capacity(BUF, BUF, io),
            side,
            seq,
            max,
            written: counters,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        match self.side {
            Side::Server => &self.written.up,
            Side::Client => &self.written.down,
        }
    }

    /// Reads one logical message into `buf` (following continuation
    /// packets), checking sequence ids and the size limit.
    pub async fn read(&mut self, buf: &mut Vec<u8>) -> Result<Read, MysqlError> {
        read_message(&mut self.io, self.side, &mut self.seq, self.max, buf).await
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
/// before a TLS upgrade).
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    side: Side,
    seq: &mut u8,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Read, MysqlError> {
    buf.clear();
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
                return Err(MysqlError::Closed {
                    side,
                    when: "in the middle of a packet",
                });
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
        let at = buf.len();
        buf.resize(at + h.len, 0);
        r.read_exact(&mut buf[at..]).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                MysqlError::Closed {
                    side,
                    when: "in the middle of a packet",
                }
            } else {
                MysqlError::Io { side, source: e }
            }
        })?;
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
}
