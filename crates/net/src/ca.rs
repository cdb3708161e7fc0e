//! The cluster certificate authority and node credentials.
//!
//! Every chorus cluster has one CA (an ECDSA P-256 key and a self-signed
//! certificate). Each node gets a leaf certificate signed by that CA whose
//! DNS subject-alternative name (and common name) is the node's name. Mutual
//! TLS over QUIC then gives every connection an *authenticated* peer name:
//! the name is not a claim in a packet but a fact proven by the handshake.
//!
//! Revocation is deliberately simple: a [`RevocationList`] of node names
//! and certificate serials that both the dialing and the accepting side
//! consult on every handshake (see `tls`). There are no CRLs or OCSP: the
//! cluster is small enough that the operator distributes the list.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rand::RngExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// Longest node name accepted (the DNS limit for a full name).
pub const NODE_NAME_BYTES_MAX: usize = 253;
/// Longest single label of a node name (the DNS label limit).
const NODE_NAME_LABEL_BYTES_MAX: usize = 63;
/// The CA certificate is valid this long from creation.
const CA_VALIDITY_DAYS: i64 = 3650;
/// Node certificates are valid this long from issue; re-issue before expiry.
const NODE_VALIDITY_DAYS: i64 = 825;
/// Certificates are back-dated by this much to tolerate clock skew between
/// the issuing machine and the nodes: clocks may be wrong
/// (`docs/design/transport-and-membership.md`, "7. Assumptions").
const BACKDATE_DAYS: i64 = 1;
/// Bytes of randomness in a certificate serial (X.509 allows serials of up to
/// 20 octets; see `docs/design/transport-and-membership.md`, "References").
const SERIAL_BYTES: usize = 16;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";
/// The node's write-signing key and its CA-signed card
/// (`docs/design/signing.md`, "Keys").
const SIGNING_FILE: &str = "signing.json";
/// Format of `signing.json`.
const SIGNING_FORMAT: u32 = 1;

/// Why a certificate operation failed. No files are left half-written by
/// `save` (each file is written to a temporary name and renamed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The node name is not usable as a DNS name (see [`validate_node_name`]).
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The rejected name.
        name: String,
        /// What rule it broke.
        reason: &'static str,
    },
    /// Key generation, signing or PEM parsing in rcgen failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM or DER blob could not be parsed.
    #[error("malformed certificate or key: {0}")]
    Malformed(String),
    /// Reading or writing a credentials file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Checks that `name` can serve as a node name: a DNS name of lowercase
/// letters, digits and `-`, labels separated by `.`, starting with a letter
/// (so it never parses as an IP address, which rustls would treat
/// differently as a server name).
pub fn validate_node_name(name: &str) -> Result<(), CaError> {
    let fail = |reason| Err(CaError::InvalidNodeName { name: name.to_owned(), reason });
    if name.is_empty() || name.len() > NODE_NAME_BYTES_MAX {
        return fail("length must be 1..=253 bytes");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return fail("must start with a lowercase letter");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > NODE_NAME_LABEL_BYTES_MAX {
            return fail("each dot-separated label must be 1..=63 bytes");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("labels must not start or end with '-'");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return fail("only lowercase letters, digits, '-' and '.' are allowed");
        }
    }
    Ok(())
}

/// The cluster CA: its certificate and private key, PEM encoded.
pub struct ClusterCa {
    cluster_name: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClusterCa").field("cluster_name", &self.cluster_name).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA for `cluster_name` (a fresh P-256 key).
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate()?;
        let params = ca_params(cluster_name)?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cluster_name: cluster_name.to_owned(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The cluster name this CA was created for (read from the subject
    /// organisation on `load`).
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The CA certificate in PEM; distribute it to every node.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        create_dir(dir)?;
        write_file(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes(), true)?;
        Ok(())
    }

    /// Reads a CA written by [`ClusterCa::save`].
    pub fn load(dir: &Path) -> Result<ClusterCa, CaError> {
        let cert_pem = read_file(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_file(&dir.join(CA_KEY_FILE))?;
        // Check that both parse and belong together before accepting them.
        let key = KeyPair::from_pem(&key_pem)?;
        let cert_der = pem_to_der(&cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), &key)?;
        drop(issuer);
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CaError::Malformed(format!("ca.pem: {e}")))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(CaError::Malformed("ca.key does not match the public key in ca.pem".into()));
        }
        let cluster_name =
            parsed.subject().iter_organization().next().and_then(|o| o.as_str().ok()).unwrap_or_default().to_owned();
        Ok(ClusterCa { cluster_name, cert_pem, key_pem })
    }

    /// Issues a leaf certificate for `node_name`, valid for both TLS client
    /// and server use. `ips` are added as IP SANs for operators' tools; chorus
    /// itself authenticates by name only.
    pub fn issue_node(&self, node_name: &str, ips: &[IpAddr]) -> Result<NodeCredentials, CaError> {
        validate_node_name(node_name)?;
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let ca_der = pem_to_der(&self.cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&ca_der.into(), ca_key)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node_name.to_owned()])?;
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        dn.push(DnType::OrganizationName, self.cluster_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        let signing = self.issue_signing_key(node_name)?;
        Ok(NodeCredentials {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            signing: Some(signing),
        })
    }

    /// A fresh ed25519 write-signing key for `node_name`, with the CA's
    /// signature binding its public half to the name (the card every node
    /// checks before believing a signature of that node).
    pub fn issue_signing_key(&self, node_name: &str) -> Result<SigningCredentials, CaError> {
        validate_node_name(node_name)?;
        let mut secret = [0u8; 32];
        rand::rng().fill(&mut secret[..]);
        let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let ca_signature = rcgen::SigningKey::sign(&ca_key, &signing_card_message(node_name, &public))?;
        Ok(SigningCredentials { secret, card: SigningCard { public, ca_signature } })
    }
}

/// A node's public write-signing key with the cluster CA's signature over
/// (node name, key). Carried in the node's SWIM identity, so every member
/// learns every member's key and can check it without trusting the relay.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SigningCard {
    pub public: [u8; 32],
    /// ECDSA P-256 (ASN.1 DER) by the CA key.
    pub ca_signature: Vec<u8>,
}

/// A node's write-signing secret and its card.
#[derive(Clone)]
pub struct SigningCredentials {
    pub secret: [u8; 32],
    pub card: SigningCard,
}

fn signing_card_message(node_name: &str, public: &[u8; 32]) -> Vec<u8> {
    let mut m = b"chorus signing key v1\0".to_vec();
    m.extend_from_slice(node_name.as_bytes());
    m.push(0);
    m.extend_from_slice(public);
    m
}

/// Largest CA signature a card may carry (ECDSA P-256 DER is at most 72).
pub const SIGNING_CARD_SIGNATURE_BYTES_MAX: usize = 128;

/// Whether `card` is the cluster CA's binding of its key to `node_name`.
pub fn verify_signing_card(ca_pem: &str, node_name: &str, card: &SigningCard) -> bool {
    if card.ca_signature.len() > SIGNING_CARD_SIGNATURE_BYTES_MAX {
        return false;
    }
    let Ok(der) = pem_to_der(ca_pem) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return false };
    let public_key = &cert.public_key().subject_public_key.data;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key.as_ref())
        .verify(&signing_card_message(node_name, &card.public), &card.ca_signature)
        .is_ok()
}

#[derive(Serialize, Deserialize)]
struct SigningFile {
    format: u32,
    secret_hex: String,
    public_hex: String,
    ca_signature_hex: String,
}

fn ca_params(cluster_name: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("chorus CA {cluster_name}"));
    dn.push(DnType::OrganizationName, cluster_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_VALIDITY_DAYS);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(BACKDATE_DAYS);
    params.not_after = now + time::Duration::days(days);
}

/// A positive serial whose DER encoding is exactly these bytes (first byte in
/// 0x01..=0x7f, so no sign padding is added), which keeps
/// [`cert_serial_hex`] equal to what was issued.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// A node's credentials: its certificate and key, and the CA certificate it
/// trusts, all PEM.
#[derive(Clone)]
pub struct NodeCredentials {
    /// The node's leaf certificate.
    pub cert_pem: String,
    /// The node's private key (PKCS#8).
    pub key_pem: String,
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The write-signing key (`signing.json`); `None` for credentials
    /// issued before signed writes existed.
    pub signing: Option<SigningCredentials>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials").finish_non_exhaustive()
    }
}

impl NodeCredentials {
    /// Writes `node.pem`, `node.key` (mode 0600) and `ca.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        create_dir(dir)?;
        write_file(&dir.join(NODE_CERT_FILE), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join(NODE_KEY_FILE), self.key_pem.as_bytes(), true)?;
        write_file(&dir.join(CA_CERT_FILE), self.ca_pem.as_bytes(), false)?;
        if let Some(sc) = &self.signing {
            let file = SigningFile {
                format: SIGNING_FORMAT,
                secret_hex: to_hex(&sc.secret),
                public_hex: to_hex(&sc.card.public),
                ca_signature_hex: to_hex(&sc.card.ca_signature),
            };
            let json =
                serde_json::to_string_pretty(&file).map_err(|e| CaError::Malformed(format!("signing key: {e}")))?;
            write_file(&dir.join(SIGNING_FILE), json.as_bytes(), true)?;
        }
        Ok(())
    }

    /// Reads credentials written by [`NodeCredentials::save`] and checks
    /// that they parse.
    pub fn load(dir: &Path) -> Result<NodeCredentials, CaError> {
        let creds = NodeCredentials {
            cert_pem: read_file(&dir.join(NODE_CERT_FILE))?,
            key_pem: read_file(&dir.join(NODE_KEY_FILE))?,
            ca_pem: read_file(&dir.join(CA_CERT_FILE))?,
            signing: load_signing(&dir.join(SIGNING_FILE))?,
        };
        creds.node_name()?;
        KeyPair::from_pem(&creds.key_pem)?;
        pem_to_der(&creds.ca_pem)?;
        Ok(creds)
    }

    /// The node name in this certificate's DNS SAN.
    pub fn node_name(&self) -> Result<String, CaError> {
        cert_node_name(&pem_to_der(&self.cert_pem)?)
    }

    /// This certificate's serial as lowercase hex (for [`RevocationList`]).
    pub fn serial_hex(&self) -> Result<String, CaError> {
        cert_serial_hex(&pem_to_der(&self.cert_pem)?)
    }
}

/// Reads `signing.json` if it exists; a damaged file is an error naming it.
fn load_signing(path: &Path) -> Result<Option<SigningCredentials>, CaError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_file(path)?;
    let bad = |what: &str| CaError::Malformed(format!("{}: {what}", path.display()));
    let file: SigningFile = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    if file.format != SIGNING_FORMAT {
        return Err(bad(&format!("format {}; this build reads {SIGNING_FORMAT}", file.format)));
    }
    let secret: [u8; 32] =
        from_hex(&file.secret_hex).and_then(|v| v.try_into().ok()).ok_or_else(|| bad("secret is not 32 hex bytes"))?;
    let public: [u8; 32] = from_hex(&file.public_hex)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("public key is not 32 hex bytes"))?;
    if ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes() != public {
        return Err(bad("the public key is not the secret's"));
    }
    let ca_signature = from_hex(&file.ca_signature_hex).ok_or_else(|| bad("CA signature is not hex"))?;
    Ok(Some(SigningCredentials { secret, card: SigningCard { public, ca_signature } }))
}

/// Names and certificate serials that must not be accepted, whatever the
/// CA says. Checked on both sides of every handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Grows with every list the CA signs: a node never replaces its list
    /// with one of a lower sequence (an old file copied back cannot undo a
    /// revocation).
    #[serde(default)]
    pub sequence: u64,
    /// When the CA signed it (ms since the Unix epoch; informational).
    #[serde(default)]
    pub issued_ms: u64,
    /// Revoked node names: any certificate for this name is refused.
    pub names: BTreeSet<String>,
    /// Revoked certificate serials, lowercase hex (see
    /// [`NodeCredentials::serial_hex`]): only that certificate is refused,
    /// so the node can be re-issued under the same name.
    pub serials_hex: BTreeSet<String>,
    /// When each name was revoked (ms since the Unix epoch): writes its
    /// node signed after that are refused even through relays
    /// (`docs/design/signing.md`). A name missing here counts from
    /// `issued_ms`.
    #[serde(default)]
    pub revoked_at_ms: std::collections::BTreeMap<String, u64>,
}

impl RevocationList {
    /// When `name` was revoked (ms), if it is.
    pub fn revoked_at_ms(&self, name: &str) -> Option<u64> {
        self.names.contains(name).then(|| self.revoked_at_ms.get(name).copied().unwrap_or(self.issued_ms))
    }
}

impl RevocationList {
    /// Whether a certificate with this name and serial is revoked.
    pub fn is_revoked(&self, name: &str, serial_hex: &str) -> bool {
        self.names.contains(name) || self.serials_hex.contains(serial_hex)
    }
}

/// The file `chorus ca revoke` writes next to the CA (`DIR/revocations.json`).
pub const REVOCATIONS_FILE: &str = "revocations.json";
/// Largest signed revocation file a node reads.
pub const REVOCATIONS_FILE_BYTES_MAX: usize = 4 << 20;
/// Version of the signed revocation file.
pub const REVOCATIONS_FORMAT: u32 = 1;

/// A [`RevocationList`] signed by the cluster CA: `list` is the list's
/// JSON, exactly the bytes signed; `signature_hex` the CA key's ECDSA P-256
/// SHA-256 signature (ASN.1 DER) of them. Any node holding the CA
/// certificate can check it, so the file may travel by any route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    pub format: u32,
    pub list: String,
    pub signature_hex: String,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl ClusterCa {
    /// Signs `list` with the CA key.
    pub fn sign_revocations(&self, list: &RevocationList) -> Result<SignedRevocations, CaError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let json = serde_json::to_string(list).map_err(|e| CaError::Malformed(format!("revocation list: {e}")))?;
        let signature = rcgen::SigningKey::sign(&key, json.as_bytes())?;
        Ok(SignedRevocations { format: REVOCATIONS_FORMAT, list: json, signature_hex: to_hex(&signature) })
    }
}

/// Checks `signed` against the CA certificate `ca_pem` and returns its
/// list; any damage, another CA's signature or an unknown format is an
/// error naming it.
pub fn verify_revocations(ca_pem: &str, signed: &SignedRevocations) -> Result<RevocationList, CaError> {
    if signed.format != REVOCATIONS_FORMAT {
        return Err(CaError::Malformed(format!(
            "revocation list format {}; this build reads {REVOCATIONS_FORMAT}",
            signed.format
        )));
    }
    let der = pem_to_der(ca_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Malformed(format!("CA certificate: {e}")))?;
    let public_key = &cert.public_key().subject_public_key.data;
    let signature = from_hex(&signed.signature_hex)
        .ok_or_else(|| CaError::Malformed("revocation list signature is not hex".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key.as_ref())
        .verify(signed.list.as_bytes(), &signature)
        .map_err(|_| CaError::Malformed("revocation list signature does not verify against the cluster CA".into()))?;
    serde_json::from_str(&signed.list).map_err(|e| CaError::Malformed(format!("revocation list: {e}")))
}

/// Reads and checks a signed revocation file (at most
/// [`REVOCATIONS_FILE_BYTES_MAX`]).
pub fn load_revocations(path: &Path, ca_pem: &str) -> Result<RevocationList, CaError> {
    load_signed_revocations(path, ca_pem).map(|(_, list)| list)
}

/// [`load_revocations`], also returning the signed form (to keep a copy).
pub fn load_signed_revocations(path: &Path, ca_pem: &str) -> Result<(SignedRevocations, RevocationList), CaError> {
    let len = fs::metadata(path).map_err(|source| CaError::Io { path: path.to_owned(), source })?.len();
    if len > REVOCATIONS_FILE_BYTES_MAX as u64 {
        return Err(CaError::Malformed(format!(
            "{}: {len} bytes, over the {REVOCATIONS_FILE_BYTES_MAX} a revocation list may have",
            path.display()
        )));
    }
    let text = read_file(path)?;
    let signed: SignedRevocations =
        serde_json::from_str(&text).map_err(|e| CaError::Malformed(format!("{}: {e}", path.display())))?;
    let list = verify_revocations(ca_pem, &signed)?;
    Ok((signed, list))
}

/// Writes `signed` to `path` atomically (a temporary file renamed over it),
/// so a node polling the file never reads half of it.
pub fn save_revocations(path: &Path, signed: &SignedRevocations) -> Result<(), CaError> {
    let json = serde_json::to_string_pretty(signed).map_err(|e| CaError::Malformed(format!("revocations: {e}")))?;
    write_file(path, json.as_bytes(), false)
}

/// The node name (first DNS SAN) of a DER certificate.
pub fn cert_node_name(der: &[u8]) -> Result<String, CaError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Malformed(format!("certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::Malformed(format!("subject alternative name: {e}")))?
        .ok_or_else(|| CaError::Malformed("certificate has no subject alternative name".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            validate_node_name(dns)?;
            return Ok((*dns).to_owned());
        }
    }
    Err(CaError::Malformed("certificate has no DNS name".into()))
}

/// The serial of a DER certificate as lowercase hex of its raw bytes.
pub fn cert_serial_hex(der: &[u8]) -> Result<String, CaError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Malformed(format!("certificate: {e}")))?;
    Ok(cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

/// Decodes the first PEM block of `pem`.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| CaError::Malformed(format!("PEM certificate: {e}")))
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.to_owned(), source })
}

fn read_file(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_owned(), source })
}

/// Writes via a temporary file and rename so a crash never leaves a torn
/// key; secret files are created with mode 0600 from the start.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    let io_err = |source| CaError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(io_err)?;
    file.write_all(data).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_revocation_list_verifies_only_untouched_and_only_against_its_own_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("prod").expect("ca");
        let other = ClusterCa::generate("prod").expect("other ca");
        let mut list = RevocationList { sequence: 7, issued_ms: 1, ..RevocationList::default() };
        list.names.insert("evil".into());
        let signed = ca.sign_revocations(&list).expect("sign");
        assert_eq!(verify_revocations(ca.cert_pem(), &signed).expect("verifies"), list);
        let path = dir.path().join(REVOCATIONS_FILE);
        save_revocations(&path, &signed).expect("save");
        assert_eq!(load_revocations(&path, ca.cert_pem()).expect("load"), list);

        // Another CA's key, a changed list, a changed signature, another format.
        let forged = other.sign_revocations(&list).expect("sign");
        assert!(verify_revocations(ca.cert_pem(), &forged).is_err(), "another CA's list was accepted");
        let edited = SignedRevocations { list: signed.list.replace("evil", "good"), ..signed.clone() };
        assert!(verify_revocations(ca.cert_pem(), &edited).is_err(), "an edited list was accepted");
        let mut sig = signed.signature_hex.clone().into_bytes();
        sig[10] = if sig[10] == b'0' { b'1' } else { b'0' };
        let bad_sig = SignedRevocations { signature_hex: String::from_utf8(sig).expect("hex"), ..signed.clone() };
        assert!(verify_revocations(ca.cert_pem(), &bad_sig).is_err());
        assert!(
            verify_revocations(ca.cert_pem(), &SignedRevocations { signature_hex: "zz".into(), ..signed.clone() })
                .is_err()
        );
        assert!(verify_revocations(ca.cert_pem(), &SignedRevocations { format: 2, ..signed }).is_err());
        std::fs::write(&path, "{not json").expect("write");
        assert!(load_revocations(&path, ca.cert_pem()).is_err());
    }

    #[test]
    fn node_names_must_be_dns_names_starting_with_a_letter() {
        assert!(validate_node_name("node-1").is_ok());
        assert!(validate_node_name("n1.dc-2.example").is_ok());
        for bad in ["", "1node", "Node", "a..b", "a-", "a_b", "10.0.0.1", "-a"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn issued_certificate_carries_name_and_serial_and_round_trips_through_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("prod").expect("ca");
        ca.save(&dir.path().join("ca")).expect("save ca");
        let ca = ClusterCa::load(&dir.path().join("ca")).expect("load ca");
        assert_eq!(ca.cluster_name(), "prod");

        let creds = ca.issue_node("alpha", &["127.0.0.1".parse().expect("ip")]).expect("issue");
        assert_eq!(creds.node_name().expect("name"), "alpha");
        let serial = creds.serial_hex().expect("serial");
        assert_eq!(serial.len(), SERIAL_BYTES * 2);

        creds.save(&dir.path().join("alpha")).expect("save node");
        let loaded = NodeCredentials::load(&dir.path().join("alpha")).expect("load node");
        assert_eq!(loaded.serial_hex().expect("serial"), serial);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [dir.path().join("ca/ca.key"), dir.path().join("alpha/node.key")] {
                let mode = fs::metadata(&key).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{key:?}");
            }
        }
    }

    #[test]
    fn loading_a_ca_whose_key_does_not_match_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ClusterCa::generate("a").expect("ca");
        let b = ClusterCa::generate("b").expect("ca");
        a.save(dir.path()).expect("save");
        fs::write(dir.path().join(CA_KEY_FILE), &b.key_pem).expect("write");
        assert!(matches!(ClusterCa::load(dir.path()), Err(CaError::Malformed(_)) | Err(CaError::Rcgen(_))));
    }

    #[test]
    fn revocation_matches_by_name_or_serial() {
        let mut list = RevocationList::default();
        list.names.insert("evil".into());
        list.serials_hex.insert("0abc".into());
        assert!(list.is_revoked("evil", "ffff"));
        assert!(list.is_revoked("good", "0abc"));
        assert!(!list.is_revoked("good", "ffff"));
    }
}
