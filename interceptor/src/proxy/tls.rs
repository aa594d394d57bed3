//! TLS for protocols that upgrade in-band (PostgreSQL SSLRequest, MySQL
//! CLIENT_SSL): the interceptor terminates the client's TLS with a
//! certificate from a local CA it creates and keeps under its state
//! directory (`<state_dir>/ca/ca.pem`, key `ca.key`, 0600), and speaks TLS
//! to the server when the server offers it.
//!
//! Clients that verify the server (`sslmode=verify-full`, `--ssl-verify-server-cert`)
//! need `ca.pem` in their trust store; `sslmode=require`-style clients work
//! as is. Upstream certificates are verified by default (system roots plus
//! `tls.upstream_ca_file`) for the name the client asked for (its SNI) or,
//! without one, the destination address: a client that verifies the server
//! must not lose that guarantee because the interceptor stands between.
//! `tls.upstream_verify = false` turns it off (encryption only).

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local CA in {dir}: {message}")]
    Ca { dir: PathBuf, message: String },
    #[error("certificate for {name}: {message}")]
    Leaf { name: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The local certificate authority and the certificates it minted.
pub struct LocalCa {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    server_configs: Mutex<HashMap<IpAddr, Arc<rustls::ServerConfig>>>,
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        let ca_err = |message: String| TlsError::Ca {
            dir: dir.to_path_buf(),
            message,
        };
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate().map_err(|e| ca_err(e.to_string()))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(|e| ca_err(e.to_string()))?;
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            params
                .distinguished_name
                .push(DnType::CommonName, format!("interceptor local CA ({host})"));
            params
                .distinguished_name
                .push(DnType::OrganizationName, "interceptor");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            let cert = params
                .self_signed(&key)
                .map_err(|e| ca_err(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(ca = %cert_path.display(), "created the local CA for TLS interception");
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| ca_err(format!("ca.key: {e}")))?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_err(format!("ca.pem: {e:?}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| ca_err(format!("ca.pem: {e}")))?;
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            ca_der,
            issuer,
            leaves: Mutex::new(HashMap::new()),
            server_configs: Mutex::new(HashMap::new()),
        })
    }

    /// Path of the CA certificate clients can trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` (DNS name or IP literal), plus `extra_ips`.
    fn leaf(&self, name: &str, extra_ips: &[IpAddr]) -> Result<Arc<CertifiedKey>, TlsError> {
        let cache_key = format!("{name}|{extra_ips:?}");
        if let Ok(m) = self.leaves.lock()
            && let Some(k) = m.get(&cache_key)
        {
            return Ok(k.clone());
        }
        let leaf_err = |message: String| TlsError::Leaf {
            name: name.to_string(),
            message,
        };
        let key = KeyPair::generate().map_err(|e| leaf_err(e.to_string()))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| leaf_err(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        let mut sans = Vec::new();
        match name.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(
                name.to_string()
                    .try_into()
                    .map_err(|e: rcgen::Error| leaf_err(e.to_string()))?,
            )),
        }
        for ip in extra_ips {
            if !sans.contains(&SanType::IpAddress(*ip)) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        if name != "localhost" {
            sans.push(SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(|e: rcgen::Error| leaf_err(e.to_string()))?,
            ));
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| leaf_err(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| leaf_err(e.to_string()))?;
        let ck = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signing,
        ));
        if let Ok(mut m) = self.leaves.lock() {
            if m.len() > 4096 {
                m.clear();
            }
            m.insert(cache_key, ck.clone());
        }
        Ok(ck)
    }

    /// Server configuration for a client that was going to `dst`: the
    /// certificate names the SNI the client sent, or else `dst` itself.
    pub fn server_config(
        self: &Arc<Self>,
        dst: IpAddr,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        if let Ok(m) = self.server_configs.lock()
            && let Some(c) = m.get(&dst)
        {
            return Ok(c.clone());
        }
        // Mint the default certificate now so handshake errors are rare.
        self.leaf(&dst.to_string(), &[])?;
        let resolver = Arc::new(Resolver {
            ca: self.clone(),
            dst,
        });
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let cfg = Arc::new(cfg);
        if let Ok(mut m) = self.server_configs.lock() {
            m.insert(dst, cfg.clone());
        }
        Ok(cfg)
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[derive(Debug)]
struct Resolver {
    ca: Arc<LocalCa>,
    dst: IpAddr,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(str::to_string)
            .unwrap_or_else(|| self.dst.to_string());
        match self.ca.leaf(&name, &[self.dst]) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mint a certificate");
                None
            }
        }
    }
}

/// Client configuration for TLS to the original server.
pub fn upstream_config(
    verify: bool,
    extra_ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = if verify {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(p) = extra_ca {
            let pem = std::fs::read(p).map_err(|source| TlsError::Io {
                path: p.to_path_buf(),
                source,
            })?;
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| TlsError::Config(format!("{}: {e:?}", p.display())))?;
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", p.display())))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

use rustls::pki_types::pem::PemObject;

/// Accepts any server certificate (encryption without authentication, what
/// `sslmode=require` gives), still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name the server's certificate is verified against: the name the
/// client asked for in its TLS handshake (SNI), as the client would have
/// verified it; without one, the original destination address.
pub fn upstream_name(sni: Option<&str>, dst: IpAddr) -> ServerName<'static> {
    sni.and_then(|s| ServerName::try_from(s.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(dst.into()))
}

/// What the record says about the server leg's certificate.
pub fn verification_note(verify: bool, name: &ServerName<'_>) -> String {
    let name = match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "the server".to_string(),
    };
    if verify {
        format!(
            "TLS to the server; its certificate was verified for {name} against the system roots and tls.upstream_ca_file"
        )
    } else {
        format!(
            "TLS to the server; its certificate was NOT verified (tls.upstream_verify = false), name {name}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_ca_terminates_and_is_reused() {
        let dir = std::env::temp_dir().join(format!("ic-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Arc::new(LocalCa::load_or_create(&dir).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let pem1 = std::fs::read(dir.join("ca.pem")).unwrap();
        drop(ca);
        let ca = Arc::new(LocalCa::load_or_create(&dir).unwrap());
        assert_eq!(
            std::fs::read(dir.join("ca.pem")).unwrap(),
            pem1,
            "the CA is kept"
        );

        // A client that trusts ca.pem completes a handshake naming the IP.
        let server_cfg = ca.server_config("127.0.0.1".parse().unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server_cfg)
                .accept(s)
                .await
                .unwrap();
            use tokio::io::AsyncWriteExt;
            tls.write_all(b"hi").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem1) {
            roots.add(c.unwrap()).unwrap();
        }
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
            .connect(upstream_name(None, "127.0.0.1".parse().unwrap()), tcp)
            .await
            .unwrap();
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        tls.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
