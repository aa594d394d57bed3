//! A small HTTP/1.1 client for the daemon's own requests (approval webhooks,
//! JWKS documents): one request per connection, `Connection: close`,
//! HTTPS through rustls with the system's root certificates. Its sockets
//! carry the daemon's SO_MARK like every other socket it opens.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proxy::upstream;

/// Largest response body accepted.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}: {1}")]
    Url(String, String),
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error(transparent)]
    Connect(#[from] upstream::UpstreamError),
    #[error("TLS to {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP exchange with {0}: {1}")]
    Io(String, std::io::Error),
    #[error("HTTP response from {0} is malformed: {1}")]
    Malformed(String, String),
    #[error("request to {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole response.
pub async fn request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    mark: u32,
    timeout: Duration,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(
        timeout,
        request_inner(method, url, content_type, body, mark, timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(url.to_string(), timeout)),
    }
}

async fn request_inner(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    mark: u32,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let u = url::Url::parse(url).map_err(|e| HttpError::Url(url.into(), e.to_string()))?;
    let https = match u.scheme() {
        "https" => true,
        "http" => false,
        s => {
            return Err(HttpError::Url(
                url.into(),
                format!("unsupported scheme {s}"),
            ));
        }
    };
    let host = u
        .host_str()
        .ok_or_else(|| HttpError::Url(url.into(), "no host".into()))?
        .to_string();
    let port = u
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = tokio::net::lookup_host((bare_host.as_str(), port))
        .await
        .map_err(|e| HttpError::Resolve(host.clone(), e))?
        .next()
        .ok_or_else(|| HttpError::Resolve(host.clone(), std::io::Error::other("no addresses")))?;
    let tcp = upstream::connect(addr, mark, timeout).await?;
    let mut path = u.path().to_string();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    let host_header = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: interceptor/{}\r\nConnection: close\r\nAccept: */*\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|e| HttpError::Url(url.into(), e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(client_config());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls(host.clone(), e))?;
        exchange(tls, &host, head.as_bytes(), body).await
    } else {
        exchange(tcp, &host, head.as_bytes(), body).await
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }),
            )
        })
        .clone()
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    head: &[u8],
    body: &[u8],
) -> Result<Response, HttpError> {
    let io = |e| HttpError::Io(host.to_string(), e);
    s.write_all(head).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            // Servers that close without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_BODY + 64 * 1024 {
            return Err(HttpError::Malformed(
                host.into(),
                "response too large".into(),
            ));
        }
    }
    parse_response(&raw).map_err(|m| HttpError::Malformed(host.to_string(), m))
}

/// Parses a complete `Connection: close` response.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?);
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_BODY {
        return Err("response body too large".into());
    }
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_line = std::str::from_utf8(&b[..nl]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > MAX_BODY || out.len() + size > MAX_BODY {
            return Err("response body too large".into());
        }
        out.extend_from_slice(b.get(..size).ok_or("truncated chunk")?);
        b = b.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\ngone").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"gone"[..]));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n")
                .is_err()
        );
        assert!(parse_response(b"no headers end").is_err());
    }
}
