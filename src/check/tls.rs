//! The TLS step of `check`: the certificate a registry presents (subject,
//! issuer, names, expiry), read with a verifier that accepts anything so it
//! can be shown, then judged against the registry's configured trust.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Report, STEP_TIMEOUT, Status};
use crate::config::{RegistryConfig, TlsMode};
use crate::registry::RegistryError;

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// TLS: what the server presents, and whether the configured mode trusts it.
pub(super) async fn check_tls(
    reg: &RegistryConfig,
    addr: SocketAddr,
    host: &str,
    ping: &Result<&'static str, RegistryError>,
    out: &mut Report,
) {
    let seen = match peer_certificate(addr, host).await {
        Ok(c) => Some(c),
        Err(e) => {
            out.add("tls", Status::Fail, format!("handshake failed: {e}"));
            None
        }
    };
    if let Some(cert) = seen {
        let mode = match &reg.tls {
            TlsMode::System => "the system's trusted CAs".to_string(),
            TlsMode::Pinned { file, .. } => format!("the pinned CA {}", file.display()),
            TlsMode::InsecureSkipVerify => String::new(),
        };
        let what = format!(
            "subject {}, issuer {}, expires {} ({} days)",
            cert.subject, cert.issuer, cert.not_after, cert.days_left
        );
        let (status, verdict) = match (&reg.tls, &ping) {
            (TlsMode::InsecureSkipVerify, _) => (
                Status::Warn,
                "NOT verified (tls.insecure_skip_verify = true); pin the CA with tls.ca_file"
                    .to_string(),
            ),
            (_, Err(e @ RegistryError::Tls { .. })) => {
                (Status::Fail, format!("not trusted by {mode}: {e}"))
            }
            _ => (Status::Ok, format!("trusted by {mode}")),
        };
        let status = if cert.days_left < 0 {
            Status::Fail
        } else if cert.days_left < EXPIRY_WARNING_DAYS && status == Status::Ok {
            Status::Warn
        } else {
            status
        };
        out.add("tls", status, format!("{what}; {verdict}"));
    }
}

/// What `check` shows of a server certificate.
#[derive(Debug, Clone)]
pub struct SeenCertificate {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Expiry, RFC 2822-like.
    pub not_after: String,
    /// Days until expiry (negative once expired).
    pub days_left: i64,
}

/// Handshakes with `addr` accepting any certificate, only to show the one
/// it presents (trust is judged separately, by the configured client).
async fn peer_certificate(addr: SocketAddr, host: &str) -> Result<SeenCertificate, String> {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || peer_certificate_blocking(addr, &host))
        .await
        .map_err(|e| e.to_string())?
}

fn peer_certificate_blocking(addr: SocketAddr, host: &str) -> Result<SeenCertificate, String> {
    use std::io::Write;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ShowAnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock =
        std::net::TcpStream::connect_timeout(&addr, STEP_TIMEOUT).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let _ = conn.writer().flush();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the server sent no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let not_after = cert.validity().not_after;
    let now = x509_parser::time::ASN1Time::now();
    let days_left = (not_after.timestamp() - now.timestamp()) / 86_400;
    Ok(SeenCertificate {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: not_after.to_string(),
        days_left,
    })
}

/// Accepts any certificate (signatures still checked for the handshake),
/// for showing it only: no request is ever sent over this connection.
#[derive(Debug)]
struct ShowAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for ShowAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
