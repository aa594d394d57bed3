//! Noticing that a client went away while nothing reads its socket.
//!
//! While a statement is held for approval the session reads nothing from
//! the client. If the client disconnects meanwhile, the request must be
//! withdrawn and both legs closed at once, not minutes later when the
//! approval times out. A [`ClientWatch`] holds a duplicate of the client's
//! socket descriptor registered for readiness: the kernel reports the peer's
//! FIN or reset as "read closed" even when unread bytes are pending.

use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Watches one client socket for its peer closing it.
pub struct ClientWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ClientWatch {
    /// Watches the socket behind `fd` (which stays usable by its owner).
    pub fn new(fd: BorrowedFd<'_>) -> std::io::Result<ClientWatch> {
        let owned = fd.try_clone_to_owned()?;
        // SAFETY: the duplicate descriptor is owned by the AsyncFd, which
        // neither closes nor replaces it while it is registered (it is
        // deregistered before the OwnedFd closes it on drop).
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE)? };
        Ok(ClientWatch { fd })
    }

    /// Resolves when the peer has closed (or reset) the connection.
    /// Readiness from bytes arriving is ignored.
    pub async fn gone(&self) {
        loop {
            match self.fd.readable().await {
                Ok(mut guard) => {
                    if guard.ready().is_read_closed() {
                        return;
                    }
                    guard.clear_ready();
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn data_is_not_a_close_but_a_close_is() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let w = ClientWatch::new(s.as_fd()).unwrap();
        c.write_all(b"pipelined bytes nobody reads").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.gone())
                .await
                .is_err(),
            "bytes arriving are not a close"
        );
        drop(c);
        tokio::time::timeout(Duration::from_secs(2), w.gone())
            .await
            .expect("the close is noticed");
        // The owner's socket is still there to read the pending bytes.
        let mut buf = [0u8; 64];
        s.readable().await.unwrap();
        assert!(s.try_read(&mut buf).unwrap() > 0);
    }
}
