//! rustls configurations for mutual TLS between chorus nodes.
//!
//! Both sides verify the other's certificate chain against the cluster CA
//! with webpki, then consult the shared [`RevocationList`]. The server
//! *requires* a client certificate: a node without one, or with one from
//! another CA, fails the handshake and never reaches the application.
//!
//! Only TLS 1.3 is offered (QUIC requires it; see
//! `docs/design/transport-and-membership.md`, "References") and only the
//! `ring` provider is used: with a second provider (aws-lc-rs) compiled in,
//! rustls cannot choose a process-level default and panics when it needs one
//! (same page, "1. Trust: cluster CA, node certificates, revocation").

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::ca::{NodeCredentials, RevocationList, cert_node_name, cert_serial_hex};

/// The ALPN protocol id; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"chorus/1";

/// The revocation list shared between the verifiers and the transport, so
/// that an update takes effect for the next handshake.
pub type SharedRevocations = Arc<RwLock<RevocationList>>;

/// Why building a TLS configuration failed. Nothing changes on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key in the credentials did not parse.
    #[error("bad credentials: {0}")]
    Credentials(String),
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The webpki verifier could not be built (e.g. an empty root store).
    #[error("verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &NodeCredentials) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(creds.ca_pem.as_bytes())
        .map_err(|e| TlsError::Credentials(format!("ca.pem: {e}")))?;
    roots.add(ca)?;
    Ok(Arc::new(roots))
}

fn identity(creds: &NodeCredentials) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Credentials(format!("node.pem: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Credentials("node.pem holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| TlsError::Credentials(format!("node.key: {e}")))?;
    Ok((certs, key))
}

/// Refuses a verified certificate whose name or serial is revoked, or whose
/// name cannot be read.
fn check_revocation(revocations: &SharedRevocations, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let name = cert_node_name(end_entity).map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
    let serial = cert_serial_hex(end_entity).map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
    let revoked = revocations
        .read()
        .map(|list| list.is_revoked(&name, &serial))
        // A poisoned lock means a writer panicked mid-update: fail closed.
        .unwrap_or(true);
    if revoked {
        return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
    }
    Ok(())
}

/// Server side: webpki client verification against the CA, then revocation.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: SharedRevocations,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_revocation(&self.revocations, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: webpki server verification against the CA, then
/// revocation. With `any_name`, the expected name is taken from the
/// certificate itself: used to dial a seed whose name is not yet known
/// (the chain must still lead to the cluster CA).
#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revocations: SharedRevocations,
    any_name: bool,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = if self.any_name {
            let name =
                cert_node_name(end_entity).map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
            let name = ServerName::try_from(name)
                .map_err(|e| rustls::Error::General(format!("peer certificate name: {e}")))?;
            self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?
        } else {
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?
        };
        check_revocation(&self.revocations, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server configuration that requires a CA-signed, unrevoked client
/// certificate and speaks only ALPN `chorus/1`.
pub fn server_config(
    creds: &NodeCredentials,
    revocations: SharedRevocations,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider()).build()?;
    let verifier = Arc::new(ClusterClientVerifier { inner, revocations });
    let (certs, key) = identity(creds)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: a resumed handshake skips certificate
    // verification, so a node holding a ticket from before its revocation
    // got back in (seen: a revoked node stayed alive in SWIM). Connections
    // are long-lived; a full handshake on reconnect costs nothing.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client configuration that presents this node's certificate and checks
/// the server against the CA and the revocation list. With `any_name` the
/// server may have any name the CA signed (seed dialing, see
/// [`ClusterServerVerifier`]); otherwise its name must equal the dialed name.
pub fn client_config(
    creds: &NodeCredentials,
    revocations: SharedRevocations,
    any_name: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(creds)?, provider()).build()?;
    let verifier = Arc::new(ClusterServerVerifier { inner, revocations, any_name });
    let (certs, key) = identity(creds)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Every handshake verifies the peer's certificate (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The authenticated node name of a QUIC connection's peer, read from the
/// certificate rustls already verified. `None` if the peer presented none
/// (impossible once the handshake completed with these configs).
pub fn peer_node_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    cert_node_name(leaf).ok()
}
