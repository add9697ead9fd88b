//! JSON Web Key Sets: parsed once (inline at config time, remote after each fetch) and used to
//! check token signatures, as Envoy's jwt_verify_lib does.
//!
//! A key is picked the way jwt_verify_lib picks it: a key whose `kid` differs from the token's
//! (both set) or whose `alg` differs from the token's (key's set) is skipped; every other key is
//! tried. A key only verifies the algorithm family of its type (`RSA`: RS*/PS*, `EC`: ES* on its
//! own curve, `OKP`: EdDSA, `oct`: HS*), so an HS256 token can never be checked against the
//! bytes of a public key (algorithm confusion).
//!
//! Signatures are checked with `ring`. It has no P-521 curve and no RSA keys under 2048 bits:
//! such keys are skipped as unusable, where Envoy (BoringSSL) would use them.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use super::token::{Alg, Jwt};

/// A parsed key set; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

/// One usable key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Jwk {
    /// Empty when the key has none.
    kid: String,
    /// Empty when the key has none.
    alg: String,
    material: Material,
}

#[derive(Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    Hmac(Vec<u8>),
}

// Keys are public, but HMAC secrets are not: never print key bytes.
impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            Self::Ec { curve, .. } => write!(f, "Ec({curve:?})"),
            Self::Ed25519(_) => f.write_str("Ed25519"),
            Self::Hmac(_) => f.write_str("Hmac(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// Why a key set could not be used; the text matches jwt_verify_lib's status for the cases it
/// shares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or not an object.
    #[error("Jwks is an invalid JSON")]
    ParseError,
    /// No `keys` member.
    #[error("Jwks does not have [keys] field")]
    NoKeys,
    /// `keys` is not an array.
    #[error("[keys] in Jwks is not an array")]
    BadKeys,
    /// No key in `keys` is usable; the last key's problem is given.
    #[error("Jwks doesn't have any valid public key (last key: {0})")]
    NoValidKeys(String),
}

/// Why a signature check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No key has the token's `kid` and `alg`.
    KidAlgMismatch,
    /// Keys were tried and none verified the signature.
    VerificationFail,
    /// An Ed25519 key was tried and the signature is not 64 bytes.
    Ed25519WrongLength,
}

pub(super) fn b64url(input: &str) -> Option<Vec<u8>> {
    // absl's WebSafeBase64Unescape, which Envoy uses, takes padded and unpadded input alike.
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    ENGINE.decode(input).ok()
}

impl JwkSet {
    /// Parses a JWKS document (`{"keys": [...]}`). Unusable keys are skipped, as
    /// jwt_verify_lib skips them; a set without one usable key is an error.
    pub fn parse(json: &[u8]) -> Result<JwkSet, JwksError> {
        let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(json) else {
            return Err(JwksError::ParseError);
        };
        // The X.509 form (`{kid: certificate PEM}`) that jwt_verify_lib also reads is not
        // implemented; it reads as a set without `keys`.
        let keys = match document.get("keys") {
            None => return Err(JwksError::NoKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(JwksError::BadKeys),
        };
        let mut usable = Vec::new();
        let mut last_problem = String::from("none given");
        for key in keys {
            let Value::Object(key) = key else { continue };
            match jwk(key) {
                Ok(key) => usable.push(key),
                Err(problem) => last_problem = problem,
            }
        }
        if usable.is_empty() {
            return Err(JwksError::NoValidKeys(last_problem));
        }
        Ok(JwkSet { keys: usable })
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the token's signature with the first key that verifies it.
    pub fn verify(&self, jwt: &Jwt) -> Result<(), VerifyError> {
        let signed = jwt.signed_data();
        let mut kid_alg_matched = false;
        for key in &self.keys {
            if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != jwt.alg.name() {
                continue;
            }
            kid_alg_matched = true;
            match verify_with(&key.material, jwt.alg, signed.as_bytes(), &jwt.signature) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        Err(if kid_alg_matched {
            VerifyError::VerificationFail
        } else {
            VerifyError::KidAlgMismatch
        })
    }
}

/// Whether `material` verifies `signature` over `data` with `alg`. A key of another family
/// than the algorithm's never verifies.
fn verify_with(
    material: &Material,
    alg: Alg,
    data: &[u8],
    signature: &[u8],
) -> Result<bool, VerifyError> {
    let ok = match (material, alg) {
        (Material::Rsa { n, e }, _) => {
            let params: &'static signature::RsaParameters = match alg {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Ok(false),
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, data, signature)
                .is_ok()
        }
        (Material::Ec { curve, point }, Alg::Es256 | Alg::Es384) => {
            let params = match (curve, alg) {
                (Curve::P256, Alg::Es256) => &signature::ECDSA_P256_SHA256_FIXED,
                (Curve::P384, Alg::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return Ok(false),
            };
            UnparsedPublicKey::new(params, point)
                .verify(data, signature)
                .is_ok()
        }
        (Material::Ed25519(key), Alg::EdDsa) => {
            // jwt_verify_lib stops at a signature of the wrong length rather than trying
            // further keys.
            if signature.len() != 64 {
                return Err(VerifyError::Ed25519WrongLength);
            }
            UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(data, signature)
                .is_ok()
        }
        (Material::Hmac(secret), Alg::Hs256 | Alg::Hs384 | Alg::Hs512) => {
            let algorithm = match alg {
                Alg::Hs256 => ring::hmac::HMAC_SHA256,
                Alg::Hs384 => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            // Constant time.
            ring::hmac::verify(&ring::hmac::Key::new(algorithm, secret), data, signature).is_ok()
        }
        _ => false,
    };
    Ok(ok)
}

fn string_member<'a>(
    key: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match key.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("[{name}] is not a string")),
    }
}

fn required<'a>(
    key: &'a serde_json::Map<String, Value>,
    name: &str,
    kty: &str,
) -> Result<&'a str, String> {
    string_member(key, name)?.ok_or_else(|| format!("[{name}] field is missing for a {kty} key"))
}

/// One key, or why it is unusable.
fn jwk(key: &serde_json::Map<String, Value>) -> Result<Jwk, String> {
    let kty = string_member(key, "kty")?.ok_or("[kty] is missing in [keys]")?;
    // A non-string `kid` or `alg` is treated as absent, as jwt_verify_lib does.
    let kid = string_member(key, "kid").ok().flatten().unwrap_or("");
    let alg = string_member(key, "alg").ok().flatten().unwrap_or("");
    let material = match kty {
        "RSA" => rsa_key(key, alg)?,
        "EC" => ec_key(key, alg)?,
        "oct" => {
            if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
                return Err("[alg] does not start with [HS] for an HMAC key".into());
            }
            let k = required(key, "k", "HMAC")?;
            match b64url(k) {
                Some(secret) if !secret.is_empty() => Material::Hmac(secret),
                _ => return Err("Jwks Oct key is an invalid Base64".into()),
            }
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err("[alg] is not [EdDSA] for an OKP key".into());
            }
            if required(key, "crv", "OKP")? != "Ed25519" {
                return Err("[crv] field is not supported for an OKP key".into());
            }
            match b64url(required(key, "x", "OKP")?) {
                Some(x) if x.len() == 32 => Material::Ed25519(x),
                Some(_) => return Err("Jwks OKP [x] field is wrong length.".into()),
                None => return Err("Jwks OKP [x] field is an invalid Base64.".into()),
            }
        }
        _ => return Err("[kty] is not supported in [keys]".into()),
    };
    Ok(Jwk {
        kid: kid.to_owned(),
        alg: alg.to_owned(),
        material,
    })
}

fn rsa_key(key: &serde_json::Map<String, Value>, alg: &str) -> Result<Material, String> {
    if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
        return Err("[alg] is not started with [RS] or [PS] for an RSA key".into());
    }
    let n = b64url(required(key, "n", "RSA")?);
    let e = b64url(required(key, "e", "RSA")?);
    let (Some(n), Some(e)) = (n, e) else {
        return Err("Jwks RSA [n] or [e] field is missing or has a parse error".into());
    };
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    // jwt_verify_lib refuses non-standard exponents early.
    if e != [3] && e != [1, 0, 1] {
        return Err("Jwks RSA [n] or [e] field is missing or has a parse error".into());
    }
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < 2048 {
        return Err(format!(
            "RSA key of {bits} bits: at least 2048 are needed (a difference from Envoy)"
        ));
    }
    Ok(Material::Rsa { n, e })
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn ec_key(key: &serde_json::Map<String, Value>, alg: &str) -> Result<Material, String> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err("[alg] is not started with [ES] for an EC key".into());
    }
    let crv = string_member(key, "crv")
        .map_err(|_| "[crv] field is not string for an EC key".to_owned())?
        .unwrap_or("");
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err("[crv] field specified is not compatible with [alg] for an EC key".into());
    }
    // As jwt_verify_lib: the algorithm decides the curve, then the curve; neither means P-256.
    let curve = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
        Curve::P256
    } else if alg == "ES384" || crv == "P-384" {
        Curve::P384
    } else if alg == "ES512" || crv == "P-521" {
        return Err("P-521 keys are not supported (a difference from Envoy)".into());
    } else {
        return Err("[crv] or [alg] field is not supported for an EC key".into());
    };
    let x = b64url(required(key, "x", "EC")?);
    let y = b64url(required(key, "y", "EC")?);
    let (Some(x), Some(y)) = (x, y) else {
        return Err("Jwks EC [x] or [y] field is an invalid Base64.".into());
    };
    let len = curve.coordinate_len();
    let (x, y) = (strip_leading_zeros(x), strip_leading_zeros(y));
    if x.len() > len || y.len() > len {
        return Err("Jwks EC [x] and [y] fields have a parse error.".into());
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4);
    for coordinate in [&x, &y] {
        point.resize(point.len() + len - coordinate.len(), 0);
        point.extend_from_slice(coordinate);
    }
    Ok(Material::Ec { curve, point })
}
