//! The generic `tcp` protocol: relay bytes both ways, unchanged.
//!
//! Used for intercepted ports that have no protocol module. Half-close is
//! honoured: when one side shuts down its write half, the other side's
//! write half is shut down too, and the relay keeps copying the other
//! direction until it also ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BUF: usize = 64 * 1024;

/// Bytes relayed so far, readable while the session runs.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// Relays until both directions have ended. Returns why it ended.
pub async fn relay(client: TcpStream, upstream: TcpStream, bytes: Arc<ByteCounters>) -> String {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = copy_half(cr, uw, &bytes.up);
    let down = copy_half(ur, cw, &bytes.down);
    let (up, down) = tokio::join!(up, down);
    match (up, down) {
        (Ok(()), Ok(())) => "closed".to_string(),
        (Err(e), _) => format!("client side error: {e}"),
        (_, Err(e)) => format!("upstream side error: {e}"),
    }
}

async fn copy_half<R, W>(mut r: R, mut w: W, counter: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    // Propagate the half-close; the peer may already be gone.
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Half-close: the client shuts down writing, and still receives the
    /// server's answer sent after it saw EOF.
    #[tokio::test]
    async fn half_close_is_propagated() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let bytes = Arc::new(ByteCounters::default());
        let b2 = bytes.clone();
        let relay_task = tokio::spawn(async move {
            let (c, _) = proxy.accept().await.unwrap();
            let u = TcpStream::connect(server_addr).await.unwrap();
            relay(c, u, b2).await
        });
        let server_task = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(format!("got {} bytes", got.len()).as_bytes())
                .await
                .unwrap();
            s.shutdown().await.unwrap();
        });
        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        c.write_all(b"hello world").await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "got 11 bytes");
        server_task.await.unwrap();
        assert_eq!(relay_task.await.unwrap(), "closed");
        assert_eq!(bytes.up.load(Ordering::Relaxed), 11);
        assert_eq!(bytes.down.load(Ordering::Relaxed), 12);
    }
}
