//! The external authorization service Envoy nodes call for API keys
//! (`envoy.service.auth.v3.Authorization`), on the control plane's gRPC port.
//!
//! Envoy's `ext_authz` filter sends each request of a route with API-key policies here, with
//! the policy names in a context extension. The key is looked up by its keyed hash in the
//! store's current consumers, the same lookup the edge proxy makes locally, so a key revoked
//! through the admin API stops working on Envoy as soon as the write commits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tollgate_proto::api_key::query_key;
use tollgate_proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use tollgate_proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use tollgate_proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use tollgate_proto::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use tollgate_proto::google::protobuf::{ListValue, Struct, Value, value::Kind};
use tollgate_proto::google::rpc;
use tonic::{Request, Response, Status};

use crate::model::{ApiKeyPolicy, CONSUMER_NAME_HEADER, CONSUMER_TIER_HEADER, Policy};
use crate::store::{Store, StoreSnapshot};
use crate::translate::{
    API_KEY_HASH_KEY, API_KEY_POLICIES_EXTENSION, CONSUMER_KEY, GROUPS_KEY, TIER_KEY,
};

/// gRPC status codes the check answers with (`google.rpc.Code`).
const OK: i32 = 0;
const UNAUTHENTICATED: i32 = 16;

/// The API-key check for Envoy nodes.
#[derive(Clone)]
pub struct ApiKeyAuthorizer {
    store: Store,
    // Rebuilt when the store's revision changes: one hash map lookup per check.
    index: Arc<Mutex<Option<Arc<KeyIndex>>>>,
}

impl std::fmt::Debug for ApiKeyAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuthorizer").finish_non_exhaustive()
    }
}

/// Consumers by key hash, and the API-key policies, at one store revision.
struct KeyIndex {
    revision: u64,
    consumers: HashMap<String, Identity>,
    policies: HashMap<String, ApiKeyPolicy>,
}

/// Who a key belongs to.
#[derive(Clone)]
struct Identity {
    name: String,
    tier: Option<String>,
    groups: Vec<String>,
}

impl KeyIndex {
    fn build(snapshot: &StoreSnapshot) -> Self {
        let mut consumers = HashMap::new();
        for consumer in snapshot.consumers.values() {
            for hash in consumer.api_key_hashes.iter().flatten() {
                consumers.insert(
                    hash.clone(),
                    Identity {
                        name: consumer.name.clone(),
                        tier: consumer.tier.clone(),
                        groups: consumer.groups.clone(),
                    },
                );
            }
        }
        let policies = snapshot
            .policies
            .values()
            .filter_map(|p| match p {
                Policy::ApiKey(key) => Some((key.name.clone(), key.clone())),
                _ => None,
            })
            .collect();
        Self {
            revision: snapshot.revision,
            consumers,
            policies,
        }
    }
}

impl ApiKeyAuthorizer {
    /// A service checking keys against `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            index: Arc::default(),
        }
    }

    /// The tonic service to mount on the gRPC server.
    pub fn into_service(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    fn index(&self) -> Arc<KeyIndex> {
        let snapshot = self.store.current();
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        match index.as_ref() {
            Some(current) if current.revision == snapshot.revision => current.clone(),
            _ => {
                let built = Arc::new(KeyIndex::build(&snapshot));
                *index = Some(built.clone());
                built
            }
        }
    }

    /// Decides one request. Never logs the key or the request's headers.
    fn decide(&self, request: &CheckRequest) -> CheckResponse {
        let attributes = request.attributes.as_ref();
        let Some(names) = attributes
            .and_then(|a| a.context_extensions.get(API_KEY_POLICIES_EXTENSION))
            .filter(|names| !names.is_empty())
        else {
            // The route names no API-key policy: nothing to check.
            return allow(OkHttpResponse::default());
        };
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = http.map(|h| &h.headers);
        let query = http
            .and_then(|h| h.path.split_once('?').map(|(_, q)| q))
            .unwrap_or_default();
        let index = self.index();
        let mut presented = false;
        for name in names.split(',') {
            let Some(policy) = index.policies.get(name) else {
                continue;
            };
            let from_header = headers.and_then(|h| h.get(&policy.header));
            let (key, in_query) = match (from_header, &policy.query) {
                (Some(key), _) => (Some(key.clone()), false),
                (None, Some(param)) => (query_key(query, param).map(Cow::into_owned), true),
                (None, None) => (None, false),
            };
            let Some(key) = key.filter(|k| !k.is_empty()) else {
                continue;
            };
            presented = true;
            let hash = self.store.api_key_hasher().hash(&key);
            if let Some(identity) = index.consumers.get(&hash) {
                let mut response = allow(consumer_headers(identity, policy, in_query));
                response.dynamic_metadata = Some(identity_metadata(
                    identity,
                    tollgate_quota::identity::api_key_hash(&hash),
                ));
                return response;
            }
        }
        deny(if presented {
            "invalid API key"
        } else {
            "missing API key"
        })
    }
}

#[tonic::async_trait]
impl Authorization for ApiKeyAuthorizer {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref())))
    }
}

/// What the request gets on its way upstream: the consumer's identity, replacing anything the
/// client sent under those names, and the key removed unless the policy forwards it.
fn consumer_headers(identity: &Identity, policy: &ApiKeyPolicy, in_query: bool) -> OkHttpResponse {
    let set = |name: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let mut ok = OkHttpResponse {
        headers: vec![set(CONSUMER_NAME_HEADER, &identity.name)],
        ..Default::default()
    };
    match &identity.tier {
        Some(tier) => ok.headers.push(set(CONSUMER_TIER_HEADER, tier)),
        None => ok.headers_to_remove.push(CONSUMER_TIER_HEADER.to_owned()),
    }
    if !policy.forward_key {
        if in_query {
            ok.query_parameters_to_remove
                .extend(policy.query.iter().cloned());
        } else {
            ok.headers_to_remove.push(policy.header.clone());
        }
    }
    ok
}

/// The consumer's identity as dynamic metadata, for Envoy's RBAC filter (authorization
/// policies on consumers and groups) and its rate-limit filter (quotas per consumer, tier or
/// key). The key appears only as `api_key_hash`, the start of its keyed hash (its quota identity).
fn identity_metadata(identity: &Identity, key_hash: &str) -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields: std::collections::HashMap<String, Value> = [
        (CONSUMER_KEY.to_owned(), string(&identity.name)),
        (
            GROUPS_KEY.to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: identity.groups.iter().map(|g| string(g)).collect(),
                })),
            },
        ),
        (API_KEY_HASH_KEY.to_owned(), string(key_hash)),
    ]
    .into();
    if let Some(tier) = &identity.tier {
        fields.insert(TIER_KEY.to_owned(), string(tier));
    }
    Struct { fields }
}

fn allow(ok: OkHttpResponse) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: OK,
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::OkResponse(ok)),
        ..Default::default()
    }
}

/// A 401 with a JSON body, as the edge proxy answers.
fn deny(message: &str) -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message}});
    CheckResponse {
        status: Some(rpc::Status {
            code: UNAUTHENTICATED,
            message: message.to_owned(),
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: HttpStatusCode::Unauthorized as i32,
                }),
                headers: vec![
                    header("www-authenticate", API_KEY_CHALLENGE),
                    header("content-type", "application/json"),
                ],
                body: body.to_string(),
            },
        )),
        ..Default::default()
    }
}

/// The `WWW-Authenticate` challenge of a missing or invalid API key.
pub const API_KEY_CHALLENGE: &str = "ApiKey realm=\"tollgate\"";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConsumerSpec, Resource};
    use crate::store::Change;
    use tollgate_proto::envoy::service::auth::v3::attribute_context;

    const KEY: &str = "k-0123456789abcdef";

    async fn authorizer() -> ApiKeyAuthorizer {
        let store = Store::in_memory();
        let consumer = ConsumerSpec {
            name: "acme".to_owned(),
            tier: Some("pro".to_owned()),
            groups: vec!["partners".into()],
            metadata: Default::default(),
            api_keys: Some(vec![KEY.to_owned()]),
        }
        .into_consumer(store.api_key_hasher())
        .unwrap();
        let policy: Policy = serde_json::from_value(
            serde_json::json!({"type": "api_key", "name": "keys", "query": "apikey"}),
        )
        .unwrap();
        store
            .write(vec![
                Change::Put(Resource::Consumer(consumer)),
                Change::Put(Resource::Policy(policy)),
            ])
            .await
            .unwrap();
        ApiKeyAuthorizer::new(store)
    }

    fn check(headers: &[(&str, &str)], path: &str, policies: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(tollgate_proto::envoy::service::auth::v3::AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        path: path.to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [(API_KEY_POLICIES_EXTENSION.to_owned(), policies.to_owned())]
                    .into(),
                ..Default::default()
            }),
        }
    }

    fn denied_message(response: &CheckResponse) -> Option<&str> {
        match &response.http_response {
            Some(check_response::HttpResponse::DeniedResponse(denied)) => {
                Some(response.status.as_ref().unwrap().message.as_str()).filter(|_| {
                    denied.status.as_ref().unwrap().code == HttpStatusCode::Unauthorized as i32
                })
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_known_key_names_its_consumer_and_is_removed() {
        let authz = authorizer().await;
        let response = authz.decide(&check(&[("x-api-key", KEY)], "/a", "keys"));
        let Some(check_response::HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("allowed expected: {response:?}")
        };
        let set: Vec<(&str, &str)> = ok
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.as_str(), h.value.as_str())
            })
            .collect();
        assert_eq!(
            set,
            [("x-consumer-name", "acme"), ("x-consumer-tier", "pro")]
        );
        assert_eq!(ok.headers_to_remove, ["x-api-key"]);
        // Quotas per key see a prefix of its keyed hash, never the key.
        let metadata = response.dynamic_metadata.as_ref().unwrap();
        let Some(Kind::StringValue(key_hash)) = &metadata.fields["api_key_hash"].kind else {
            panic!("api_key_hash expected: {metadata:?}")
        };
        assert_eq!(key_hash, &authz.store.api_key_hasher().hash(KEY)[..32]);
        assert!(!format!("{response:?}").contains(KEY));

        let response = authz.decide(&check(&[], &format!("/a?x=1&apikey={KEY}"), "keys"));
        let Some(check_response::HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("allowed expected: {response:?}")
        };
        assert_eq!(ok.query_parameters_to_remove, ["apikey"]);
    }

    #[tokio::test]
    async fn missing_and_unknown_keys_are_refused() {
        let authz = authorizer().await;
        let missing = authz.decide(&check(&[], "/a", "keys"));
        assert_eq!(denied_message(&missing), Some("missing API key"));
        let wrong = authz.decide(&check(
            &[("x-api-key", "k-not-a-real-key-000")],
            "/a",
            "keys",
        ));
        assert_eq!(denied_message(&wrong), Some("invalid API key"));
        // A policy deleted since the config was pushed cannot let anything through.
        let gone = authz.decide(&check(&[("x-api-key", KEY)], "/a", "deleted"));
        assert_eq!(denied_message(&gone), Some("missing API key"));
    }
}
