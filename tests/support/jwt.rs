//! JWTs for tests: signing keys (RSA from fixtures, EC and HMAC made per run), tokens signed
//! with them, deliberately broken tokens, and a JWKS server whose key set a test can rotate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A signing key with the public half as a JWK.
pub struct SigningKey {
    kid: String,
    key: Key,
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// RSA key "a" (2048 bits, PKCS#1 DER from `tests/fixtures/jwt`), signing RS256.
    pub fn rsa_a(kid: &str) -> SigningKey {
        Self::rsa(kid, include_bytes!("../fixtures/jwt/rsa-a.der"))
    }

    /// RSA key "b", another key for rotation and bad-signature cases.
    pub fn rsa_b(kid: &str) -> SigningKey {
        Self::rsa(kid, include_bytes!("../fixtures/jwt/rsa-b.der"))
    }

    fn rsa(kid: &str, pkcs1: &[u8]) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            key: Key::Rsa(RsaKeyPair::from_der(pkcs1).expect("fixture RSA key")),
        }
    }

    /// A fresh P-256 key, signing ES256.
    pub fn ec(kid: &str) -> SigningKey {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("EC key generation");
        SigningKey {
            kid: kid.to_owned(),
            key: Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("EC key")),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(pair) => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({
                    "kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                    "n": B64.encode(&public.n),
                    "e": B64.encode(&public.e),
                })
            }
            Key::Ec(pair) => {
                // Uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "kid": self.kid, "alg": "ES256", "use": "sig", "crv": "P-256",
                    "x": B64.encode(&point[1..33]),
                    "y": B64.encode(&point[33..65]),
                })
            }
        }
    }

    /// A token with these claims, signed by this key, its header naming the key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token with this exact header, signed by this key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .expect("RSA signing");
                out
            }
            Key::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("EC signing")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(signature))
    }

    /// The RSA public key as PEM (SubjectPublicKeyInfo), as an attacker would find it
    /// published: the secret of the algorithm-confusion attack.
    pub fn rsa_a_public_pem() -> &'static [u8] {
        include_bytes!("../fixtures/jwt/rsa-a.pub.pem")
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// A token signed HS256 with `secret`.
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT"}), claims)
    )
}

/// A JWKS document holding these keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HTTP server on `127.0.0.1:0` serving one JWKS document at any path; the document can
/// be replaced (key rotation) and fetches are counted.
pub struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Starts serving `document`.
    pub async fn start(document: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap_or_else(|e| e.into_inner()).to_string();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            document,
            fetches,
            task,
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Replaces the document served from now on.
    pub fn set(&self, document: Value) {
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = document;
    }

    /// How many times the document was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
