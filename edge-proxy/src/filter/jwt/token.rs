//! A JWT taken apart and checked for shape, as jwt_verify_lib's `Jwt::parseFromString` does,
//! with the same failure for each malformation (see [`Status`]).

use serde_json::{Map, Value};

use super::Status;
use super::jwks::b64url;

/// A signing algorithm Envoy implements. Anything else (`none` included) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512: known, but no key can verify it here (see [`super::jwks`]).
    Es512,
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// The JOSE name, e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A parsed, not yet verified, JWT. It owns what it needs, so that a verified one can be kept
/// in the provider's cache ([`super::verified`]) and reused by later requests.
#[derive(Debug)]
pub struct Jwt {
    /// What the signature covers: the first two parts as sent (base64url), joined by `.`.
    signed: String,
    /// Where the second part starts in `signed`.
    payload_at: usize,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `alg`.
    pub alg: Alg,
    /// `kid`; empty when absent.
    pub kid: String,
    /// `iss`; empty when absent.
    pub iss: String,
    /// `nbf`; 0 when absent.
    pub nbf: u64,
    /// `exp`; 0 when absent.
    pub exp: u64,
    /// `aud`, a string or a list of strings.
    pub audiences: Vec<String>,
    /// The payload's claims.
    pub payload: Map<String, Value>,
    /// The header's fields.
    pub header: Map<String, Value>,
}

impl Jwt {
    /// Parses `token`: three base64url parts, a JSON header naming an implemented `alg`, a
    /// JSON payload whose registered claims have the right types.
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        // Empty parts are skipped, as absl's `SkipEmpty` does.
        let mut parts = token.split('.').filter(|p| !p.is_empty());
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Status::JwtBadFormat);
        };
        let header = b64url(header_b64).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
            return Err(Status::JwtHeaderParseErrorBadJson);
        };
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => {
                Alg::parse(alg).ok_or(Status::JwtHeaderNotImplementedAlg)?
            }
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        let kid = string_claim(&header, "kid", Status::JwtHeaderBadKid)?;

        let payload = b64url(payload_b64).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
        let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(&payload) else {
            return Err(Status::JwtPayloadParseErrorBadJson);
        };
        let iss = string_claim(&payload, "iss", Status::JwtPayloadParseErrorIssNotString)?;
        string_claim(&payload, "sub", Status::JwtPayloadParseErrorSubNotString)?;
        number_claim(
            &payload,
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = number_claim(
            &payload,
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = number_claim(
            &payload,
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string_claim(&payload, "jti", Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = b64url(signature_b64).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
        let mut signed = String::with_capacity(header_b64.len() + 1 + payload_b64.len());
        signed.push_str(header_b64);
        signed.push('.');
        signed.push_str(payload_b64);
        Ok(Jwt {
            signed,
            payload_at: header_b64.len() + 1,
            signature,
            alg,
            kid,
            iss,
            nbf,
            exp,
            audiences,
            payload,
            header,
        })
    }

    /// What the signature covers: the first two parts, as sent, joined by `.`.
    pub fn signed_data(&self) -> &str {
        &self.signed
    }

    /// The second part as sent (base64url): what `forward_payload_header` forwards.
    pub fn payload_b64(&self) -> &str {
        &self.signed[self.payload_at..]
    }

    /// Checks `nbf` and `exp` against `now` (Unix seconds) with `skew` seconds of tolerance,
    /// as jwt_verify_lib's `verifyTimeConstraint`.
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), Status> {
        if now.saturating_add(skew) < self.nbf {
            return Err(Status::JwtNotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(Status::JwtExpired);
        }
        Ok(())
    }
}

/// A string claim; empty when absent; `wrong` when present and not a string.
fn string_claim(object: &Map<String, Value>, name: &str, wrong: Status) -> Result<String, Status> {
    match object.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong),
    }
}

/// A numeric date claim as jwt_verify_lib's `GetUInt64` reads it: any JSON number, truncated;
/// negative or too large is out of range; 0 when absent.
fn number_claim(
    object: &Map<String, Value>,
    name: &str,
    not_integer: Status,
    out_of_range: Status,
) -> Result<u64, Status> {
    match object.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(v);
            }
            let v = n.as_f64().unwrap_or(-1.0);
            // `u64::MAX as f64` is 2^64, the first value out of range.
            if v < 0.0 || v >= u64::MAX as f64 {
                Err(out_of_range)
            } else {
                Ok(v as u64)
            }
        }
        Some(_) => Err(not_integer),
    }
}
