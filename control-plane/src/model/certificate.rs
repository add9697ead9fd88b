//! TLS certificates: served by listeners, delivered to proxies over SDS. The private key is
//! write-only: it is stored, sent to proxies, and never returned by the API or logged.

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ValidationError;

/// A certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// Unique name; listeners refer to it.
    #[serde(default)]
    pub name: String,
    /// PEM: the leaf certificate first, then intermediates.
    pub cert_pem: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Write-only: never returned. When omitted on a
    /// replace, the stored key is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key, whoever debug-logs a certificate.
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a certificate says about itself, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CertificateInfo {
    /// DNS names from the subject alternative names (or the common name when there are none).
    pub server_names: Vec<String>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix_secs: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix_secs: i64,
    /// SHA-256 of the leaf certificate (DER), hex.
    pub sha256_fingerprint: String,
    /// Certificates in the chain.
    pub chain_length: usize,
}

/// The largest PEM accepted for a certificate chain or key.
const MAX_PEM_BYTES: usize = 64 * 1024;

impl Certificate {
    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        let chain = self.chain()?;
        let info = leaf_info(&chain)?;
        if info.server_names.is_empty() {
            return Err(ValidationError::new(
                "cert_pem",
                "the certificate names no DNS host (no subject alternative name or common name)",
            ));
        }
        let Some(key_pem) = &self.key_pem else {
            return Err(ValidationError::new("key_pem", "is required"));
        };
        if key_pem.len() > MAX_PEM_BYTES {
            return Err(ValidationError::new("key_pem", "must be at most 64 KiB"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            ValidationError::new(
                "key_pem",
                "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            ValidationError::new("key_pem", format!("unsupported private key: {e}"))
        })?;
        let leaf_spki = x509_parser::parse_x509_certificate(chain[0].as_ref())
            .map(|(_, cert)| cert.public_key().raw.to_vec())
            .map_err(|e| {
                ValidationError::new("cert_pem", format!("unreadable certificate: {e}"))
            })?;
        match signing_key.public_key() {
            Some(spki) if spki.as_ref() == leaf_spki.as_slice() => Ok(()),
            Some(_) => Err(ValidationError::new(
                "key_pem",
                "does not match the certificate's public key",
            )),
            None => Err(ValidationError::new(
                "key_pem",
                "cannot be checked against the certificate",
            )),
        }
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, ValidationError> {
        if self.cert_pem.len() > MAX_PEM_BYTES {
            return Err(ValidationError::new("cert_pem", "must be at most 64 KiB"));
        }
        let chain: Vec<_> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ValidationError::new("cert_pem", format!("is not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(ValidationError::new(
                "cert_pem",
                "holds no CERTIFICATE block",
            ));
        }
        Ok(chain)
    }

    /// The certificate's names, validity and fingerprint.
    pub fn info(&self) -> Result<CertificateInfo, ValidationError> {
        leaf_info(&self.chain()?)
    }

    /// The same certificate without its key, for anything shown to people.
    pub fn without_key(&self) -> Certificate {
        Certificate {
            key_pem: None,
            ..self.clone()
        }
    }
}

fn leaf_info(chain: &[CertificateDer<'_>]) -> Result<CertificateInfo, ValidationError> {
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| ValidationError::new("cert_pem", format!("unreadable certificate: {e}")))?;
    let mut server_names: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if server_names.is_empty() {
        server_names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    server_names.dedup();
    Ok(CertificateInfo {
        server_names,
        not_before_unix_secs: leaf.validity().not_before.timestamp(),
        not_after_unix_secs: leaf.validity().not_after.timestamp(),
        sha256_fingerprint: hex::encode(Sha256::digest(chain[0].as_ref())),
        chain_length: chain.len(),
    })
}
