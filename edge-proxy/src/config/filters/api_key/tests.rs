//! The API-key filter's config, per-route config and key table: what is accepted, and the
//! field path of each NACK.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;
use tollgate_proto::pack_any;

use super::*;
use crate::config::filters::{HttpFilterKind, http_filter_kind};
use crate::config::listener::Secret;
use crate::config::{ConfigError, Resource};

fn provider(header: &str, query: &str) -> api_key_pb::ApiKeyProvider {
    api_key_pb::ApiKeyProvider {
        header: header.into(),
        query: query.into(),
        forward_key: false,
    }
}

fn build(edit: impl FnOnce(&mut api_key_pb::ApiKeyAuth)) -> Result<Arc<ApiKeyAuth>, String> {
    let mut proto = api_key_pb::ApiKeyAuth {
        providers: HashMap::from([
            ("keys".to_owned(), provider("x-api-key", "apikey")),
            ("alt".to_owned(), provider("X-Alt-Key", "")),
        ]),
        key_table: "tollgate:api-keys".into(),
    };
    edit(&mut proto);
    match http_filter_kind("api", &pack_any(&proto), |_| Ok(())) {
        Ok(HttpFilterKind::ApiKey(config)) => Ok(config),
        Ok(other) => panic!("not the API-key filter: {other:?}"),
        Err(r) => Err(r.into_error(Resource::Listener("l".into())).field),
    }
}

#[test]
fn filter_configs_are_accepted_or_nacked_naming_the_field() {
    let config = build(|_| {}).unwrap();
    let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alt", "keys"]);
    // Header names are lower-cased; an empty query is none.
    assert_eq!(config.providers[0].header, "x-alt-key");
    assert_eq!(config.providers[0].query, None);
    assert_eq!(config.providers[1].query.as_deref(), Some("apikey"));
    assert_eq!(config.key_table, "tollgate:api-keys");

    type Edit = Box<dyn FnOnce(&mut api_key_pb::ApiKeyAuth)>;
    let keys = |f: fn(&mut api_key_pb::ApiKeyProvider)| -> Edit {
        Box::new(move |c: &mut api_key_pb::ApiKeyAuth| f(c.providers.get_mut("keys").unwrap()))
    };
    let cases: Vec<(&str, Edit)> = vec![
        ("typed_config.key_table", Box::new(|c| c.key_table.clear())),
        ("typed_config.providers", Box::new(|c| c.providers.clear())),
        (
            "typed_config.providers.keys.header",
            keys(|p| p.header.clear()),
        ),
        (
            "typed_config.providers.keys.header",
            keys(|p| p.header = ":path".into()),
        ),
        (
            "typed_config.providers.keys.header",
            keys(|p| p.header = "bad header".into()),
        ),
        (
            "typed_config.providers.keys.header",
            keys(|p| p.header = "x-consumer-name".into()),
        ),
        (
            "typed_config.providers.keys.query",
            keys(|p| p.query = "a&b".into()),
        ),
        (
            "typed_config.providers[\"\"]",
            Box::new(|c| {
                c.providers.insert(String::new(), provider("x-k", ""));
            }),
        ),
    ];
    for (field, edit) in cases {
        assert_eq!(build(edit).unwrap_err(), field);
    }
}

/// Appends a field the message does not have, as a newer control plane might send.
fn with_unknown_field(mut bytes: Vec<u8>, tag: u32) -> Vec<u8> {
    prost::encoding::encode_key(tag, prost::encoding::WireType::Varint, &mut bytes);
    prost::encoding::encode_varint(1, &mut bytes);
    bytes
}

#[test]
fn unknown_fields_are_nacked_at_any_depth() {
    let proto = api_key_pb::ApiKeyAuth {
        providers: HashMap::from([("keys".to_owned(), provider("x-api-key", ""))]),
        key_table: "t".into(),
    };
    let mut any = pack_any(&proto);
    any.value = with_unknown_field(any.value, 9);
    let err = http_filter_kind("api", &any, |_| Ok(()))
        .unwrap_err()
        .into_error(Resource::Listener("l".into()));
    assert_eq!(
        err.to_string(),
        "listener l: typed_config: not supported: unknown field 9 of \
         tollgate.filters.http.api_key.v1.ApiKeyAuth"
    );

    // Inside a provider (a map entry's value).
    let inner = with_unknown_field(provider("x-api-key", "").encode_to_vec(), 7);
    let mut entry = Vec::new();
    prost::encoding::string::encode(1, &"keys".to_owned(), &mut entry);
    prost::encoding::bytes::encode(2, &inner, &mut entry);
    let mut bytes = Vec::new();
    prost::encoding::bytes::encode(1, &entry, &mut bytes);
    prost::encoding::string::encode(2, &"t".to_owned(), &mut bytes);
    let any = pb::Any {
        type_url: any.type_url.clone(),
        value: bytes,
    };
    let err = http_filter_kind("api", &any, |_| Ok(()))
        .unwrap_err()
        .into_error(Resource::Listener("l".into()));
    assert_eq!(err.field, "typed_config.providers.value");
    assert!(
        err.to_string()
            .ends_with("unknown field 7 of tollgate.filters.http.api_key.v1.ApiKeyProvider"),
        "{err}"
    );
}

#[test]
fn per_route_configs_need_named_providers() {
    let read = |providers: &[&str]| {
        let any = pack_any(&api_key_pb::ApiKeyPerRoute {
            providers: providers.iter().map(|p| (*p).to_owned()).collect(),
        });
        per_route(&any).map_err(|r| r.into_error(Resource::RouteConfig("r".into())).field)
    };
    assert_eq!(
        read(&["keys", "alt"]).unwrap().providers,
        ["keys".to_owned(), "alt".to_owned()]
    );
    assert_eq!(read(&[]).unwrap_err(), "providers");
    assert_eq!(read(&["keys", ""]).unwrap_err(), "providers[1]");
    let mut any = pack_any(&api_key_pb::ApiKeyPerRoute {
        providers: vec!["keys".into()],
    });
    any.value = with_unknown_field(any.value, 2);
    assert!(per_route(&any).is_err());
}

// ---------------------------------------------------------------------------------------------
// The key table

const HMAC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// HMAC-SHA-256 hex, as the control plane's `ApiKeyHasher` writes it.
pub(crate) fn hash(key: &str) -> String {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HMAC_KEY),
        key.as_bytes(),
    );
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key table: acme (tier pro, group partners) with two keys, beta (no tier) with one.
pub(crate) fn table_proto() -> api_key_pb::ApiKeyTable {
    api_key_pb::ApiKeyTable {
        hmac_secret: HMAC_KEY.to_vec(),
        consumers: vec![
            api_key_pb::ApiKeyConsumer {
                name: "acme".into(),
                tier: "pro".into(),
                key_hashes: vec![hash("acme-key-1"), hash("acme-key-2")],
                groups: vec!["partners".into()],
            },
            api_key_pb::ApiKeyConsumer {
                name: "beta".into(),
                tier: String::new(),
                key_hashes: vec![hash("beta/key+1")],
                groups: Vec::new(),
            },
        ],
    }
}

pub(crate) fn secret_proto(name: &str, bytes: Vec<u8>) -> tls_pb::Secret {
    tls_pb::Secret {
        name: name.into(),
        r#type: Some(tls_pb::secret::Type::GenericSecret(tls_pb::GenericSecret {
            secret: Some(core_pb::DataSource {
                specifier: Some(core_pb::data_source::Specifier::InlineBytes(bytes)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// The table of [`table_proto`], as the snapshot holds it.
pub(crate) fn table() -> ApiKeyTable {
    let secret = secret_proto("keys", table_proto().encode_to_vec());
    match Secret::try_from(&secret).unwrap() {
        Secret::ApiKeyTable { table, .. } => Arc::into_inner(table).unwrap(),
        Secret::Tls(_) => unreachable!(),
    }
}

#[test]
fn key_tables_index_consumers_by_keyed_hash() {
    let table = table();
    assert_eq!(table.summary(), (2, 3));
    let (acme, _) = table.lookup(b"acme-key-2").unwrap();
    assert_eq!(acme.name, "acme");
    assert_eq!(acme.tier.as_deref(), Some("pro"));
    assert_eq!(acme.groups, ["partners"]);
    assert_eq!(acme.tier_header.as_ref().unwrap(), "pro");
    let (beta, _) = table.lookup(b"beta/key+1").unwrap();
    assert_eq!((beta.name.as_str(), beta.tier.as_ref()), ("beta", None));
    assert!(table.lookup(b"acme-key-3").is_none());
    assert!(table.lookup(b"").is_none());
    // Nothing secret in the debug output.
    let debug = format!("{table:?}");
    assert_eq!(debug, "ApiKeyTable { consumers: 2, keys: 3, .. }");
}

#[test]
fn key_tables_are_nacked_naming_the_field() {
    let read = |secret: tls_pb::Secret| -> ConfigError { Secret::try_from(&secret).unwrap_err() };
    let encoded = |edit: fn(&mut api_key_pb::ApiKeyTable)| {
        let mut table = table_proto();
        edit(&mut table);
        secret_proto("keys", table.encode_to_vec())
    };
    let base = "generic_secret.secret.inline_bytes";
    let cases: Vec<(tls_pb::Secret, String)> = vec![
        (
            encoded(|t| t.hmac_secret.clear()),
            format!("{base}.hmac_secret"),
        ),
        (
            encoded(|t| t.consumers[1].key_hashes[0] = "ABCD".into()),
            format!("{base}.consumers[1].key_hashes[0]"),
        ),
        (
            encoded(|t| t.consumers[0].key_hashes[1] = hash("x").to_uppercase()),
            format!("{base}.consumers[0].key_hashes[1]"),
        ),
        (
            encoded(|t| t.consumers[0].name.clear()),
            format!("{base}.consumers[0].name"),
        ),
        (
            encoded(|t| t.consumers[0].tier = "a\nb".into()),
            format!("{base}.consumers[0].tier"),
        ),
        (
            secret_proto("keys", vec![0xff, 0xff]),
            format!("{base}.value"),
        ),
        (
            secret_proto("keys", with_unknown_field(table_proto().encode_to_vec(), 5)),
            base.to_owned(),
        ),
        (
            tls_pb::Secret {
                name: "keys".into(),
                r#type: Some(tls_pb::secret::Type::GenericSecret(Default::default())),
            },
            "generic_secret.secret".into(),
        ),
    ];
    for (secret, field) in cases {
        let err = read(secret);
        assert_eq!(err.field, field, "{err}");
        assert_eq!(err.resource, Resource::Secret("keys".into()));
        // The HMAC key is never quoted.
        assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    }
}
