//! The CLI's side of the control socket (blocking; one request at a time).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the interceptor daemon at {path}: {source} (is it running? start it with `interceptor run` or `systemctl start interceptor`)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon sent an unreadable response: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request; returns the response data or the daemon's error.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let resp = self.raw_call(req)?;
        if resp.ok {
            Ok(resp.data)
        } else {
            Err(ClientError::Daemon(
                resp.error.unwrap_or_else(|| "request failed".into()),
            ))
        }
    }

    fn raw_call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(io)?;
        self.read_response()
    }

    /// Reads one more response line (for streaming requests).
    pub fn read_response(&mut self) -> Result<Response, ClientError> {
        let mut buf = String::new();
        let n = self
            .reader
            .read_line(&mut buf)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Protocol("daemon closed the connection".into()));
        }
        serde_json::from_str(buf.trim_end()).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
