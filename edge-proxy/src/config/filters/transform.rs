//! Tollgate's body transform filter (`tollgate.filters.http.transform`, protos in
//! `tollgate_proto::transform`): the connection manager's `Transform` (empty), and a route's
//! [`TransformPerRoute`]: the body changes of its transform policies, validated here once.
//! [`crate::filter::transform`] applies them.
//!
//! These protos are Tollgate's own, so a field or enum value this proxy does not know is NACKed
//! (prost would drop or keep it silently): a newer control plane must not see an older proxy
//! ignore a change it asked for.

use tollgate_proto::google::protobuf as pb;
use tollgate_proto::transform as transform_pb;

use super::Schema;
use crate::config::{Reason, Rejection, Within as _};
use crate::filter::transform::json::Json;

/// A validated `TransformPerRoute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformPerRoute {
    /// Changes to the request body, in order.
    pub request: Vec<BodyTransform>,
    /// Changes to the response body, in order.
    pub response: Vec<BodyTransform>,
}

/// One policy's body changes: convert, then rename keys, remove fields, add fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTransform {
    /// The conversion made first.
    pub convert: Conversion,
    /// The case every object key is renamed to.
    pub rename_keys: Option<KeyCase>,
    /// Paths (object member names, outermost first) removed.
    pub remove: Vec<Vec<String>>,
    /// Paths set, and their values, sorted by path.
    pub add: Vec<(Vec<String>, Json)>,
    /// Refuse a body that does not parse (or is too large) instead of passing it on unchanged.
    pub reject_invalid: bool,
}

/// A body format conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// None: the body is JSON, and stays JSON.
    None,
    /// XML in, JSON out.
    XmlToJson,
    /// JSON in, XML out.
    JsonToXml,
}

/// A naming convention for object keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCase {
    /// `userId` → `user_id`.
    SnakeCase,
    /// `user_id` → `userId`.
    CamelCase,
}

/// Reads the filter's config (`Transform`, which has no fields).
pub(crate) fn filter_config(any: &pb::Any) -> Result<(), Rejection> {
    known_fields(&any.value, &TRANSFORM)?;
    let transform_pb::Transform {} = decode(any)?;
    Ok(())
}

/// Reads a route's `TransformPerRoute`.
pub(crate) fn per_route(any: &pb::Any) -> Result<TransformPerRoute, Rejection> {
    known_fields(&any.value, &TRANSFORM_PER_ROUTE)?;
    let transform_pb::TransformPerRoute { request, response } = decode(any)?;
    let read = |list: &[transform_pb::BodyTransform], field: &'static str| {
        list.iter()
            .enumerate()
            .map(|(i, body)| body_transform(body).at(field, i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(TransformPerRoute {
        request: read(&request, "request")?,
        response: read(&response, "response")?,
    })
}

fn body_transform(proto: &transform_pb::BodyTransform) -> Result<BodyTransform, Rejection> {
    let transform_pb::BodyTransform {
        convert,
        rename_keys,
        remove,
        add,
        reject_invalid,
    } = proto;
    let convert = match transform_pb::Conversion::try_from(*convert) {
        Ok(transform_pb::Conversion::None) => Conversion::None,
        Ok(transform_pb::Conversion::XmlToJson) => Conversion::XmlToJson,
        Ok(transform_pb::Conversion::JsonToXml) => Conversion::JsonToXml,
        Err(_) => {
            return Err(Rejection::new(
                "convert",
                Reason::UnsupportedValue(format!("conversion {convert}")),
            ));
        }
    };
    let rename_keys = match transform_pb::KeyCase::try_from(*rename_keys) {
        Ok(transform_pb::KeyCase::Unchanged) => None,
        Ok(transform_pb::KeyCase::SnakeCase) => Some(KeyCase::SnakeCase),
        Ok(transform_pb::KeyCase::CamelCase) => Some(KeyCase::CamelCase),
        Err(_) => {
            return Err(Rejection::new(
                "rename_keys",
                Reason::UnsupportedValue(format!("key case {rename_keys}")),
            ));
        }
    };
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, path)| dotted(path).map_err(|r| Rejection::new_at("remove", i, r)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut paths: Vec<&String> = add.keys().collect();
    // Sorted: the map's order is a hash order, and the first error reported must not vary.
    paths.sort();
    let mut added = Vec::with_capacity(paths.len());
    for path in paths {
        let within = |r: Rejection| r.key(path).within("add");
        let steps = dotted(path).map_err(|r| within(Rejection::here(r)))?;
        let value = Json::parse(add[path].as_bytes()).map_err(|e| {
            within(Rejection::here(Reason::Invalid(format!(
                "value is not JSON: {e}"
            ))))
        })?;
        added.push((steps, value));
    }
    if convert == Conversion::JsonToXml
        && (rename_keys.is_some() || !remove.is_empty() || !added.is_empty())
    {
        // The JSON changes would apply to XML.
        return Err(Rejection::new(
            "convert",
            Reason::Invalid(
                "json_to_xml cannot be combined with rename_keys, remove or add".into(),
            ),
        ));
    }
    Ok(BodyTransform {
        convert,
        rename_keys,
        remove,
        add: added,
        reject_invalid: *reject_invalid,
    })
}

/// A dotted path: object member names, none empty.
fn dotted(path: &str) -> Result<Vec<String>, Reason> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(Reason::Invalid(format!(
            "{path:?} is not a dotted path (a, a.b)"
        )));
    }
    Ok(path.split('.').map(str::to_owned).collect())
}

fn decode<T: prost::Message + Default>(any: &pb::Any) -> Result<T, Rejection> {
    T::decode(any.value.as_slice())
        .map_err(|e| Rejection::new("value", Reason::Invalid(format!("undecodable: {e}"))))
}

const TRANSFORM: Schema = Schema {
    message: "Transform",
    fields: &[],
};
/// A `map<string, string>` entry.
const ADD_ENTRY: Schema = Schema {
    message: "BodyTransform.AddEntry",
    fields: &[(1, "key", None), (2, "value", None)],
};
const BODY_TRANSFORM: Schema = Schema {
    message: "BodyTransform",
    fields: &[
        (1, "convert", None),
        (2, "rename_keys", None),
        (3, "remove", None),
        (4, "add", Some(&ADD_ENTRY)),
        (5, "reject_invalid", None),
    ],
};
const TRANSFORM_PER_ROUTE: Schema = Schema {
    message: "TransformPerRoute",
    fields: &[
        (1, "request", Some(&BODY_TRANSFORM)),
        (2, "response", Some(&BODY_TRANSFORM)),
    ],
};

/// Tollgate's transform protos' package, for [`known_fields`]'s errors.
const PACKAGE: &str = "tollgate.filters.http.transform.v1";

fn known_fields(bytes: &[u8], schema: &Schema) -> Result<(), Rejection> {
    super::known_fields(bytes, PACKAGE, schema)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;
    use tollgate_proto::pack_any;

    use super::*;
    use crate::config::Resource;

    fn body(
        convert: i32,
        rename: i32,
        remove: &[&str],
        add: &[(&str, &str)],
    ) -> transform_pb::BodyTransform {
        transform_pb::BodyTransform {
            convert,
            rename_keys: rename,
            remove: remove.iter().map(|s| (*s).to_owned()).collect(),
            add: add
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            reject_invalid: true,
        }
    }

    fn rejected(any: &pb::Any) -> String {
        let error = per_route(any)
            .unwrap_err()
            .into_error(Resource::RouteConfig("r".into()));
        format!("{}: {}", error.field, error.reason)
    }

    #[test]
    fn reads_what_the_control_plane_sends() {
        let proto = transform_pb::TransformPerRoute {
            request: vec![body(
                1,
                1,
                &["a.b", "password"],
                &[("meta.via", r#""gw""#), ("n", "1.50")],
            )],
            response: vec![body(2, 0, &[], &[])],
        };
        let read = per_route(&pack_any(&proto)).unwrap();
        assert_eq!(read.request[0].convert, Conversion::XmlToJson);
        assert_eq!(read.request[0].rename_keys, Some(KeyCase::SnakeCase));
        assert_eq!(
            read.request[0].remove,
            [
                vec!["a".to_owned(), "b".to_owned()],
                vec!["password".to_owned()]
            ]
        );
        assert_eq!(
            read.request[0].add,
            [
                (
                    vec!["meta".to_owned(), "via".to_owned()],
                    Json::String("gw".into())
                ),
                (vec!["n".to_owned()], Json::Number("1.50".into())),
            ]
        );
        assert!(read.request[0].reject_invalid);
        assert_eq!(read.response[0].convert, Conversion::JsonToXml);
        assert!(filter_config(&pack_any(&transform_pb::Transform {})).is_ok());
    }

    #[test]
    fn nacks_name_the_field() {
        let per_route_with = |b: transform_pb::BodyTransform| {
            pack_any(&transform_pb::TransformPerRoute {
                request: vec![body(0, 1, &[], &[]), b],
                response: vec![],
            })
        };
        assert_eq!(
            rejected(&per_route_with(body(7, 0, &[], &[]))),
            "request[1].convert: not supported: conversion 7"
        );
        assert_eq!(
            rejected(&per_route_with(body(0, 9, &[], &[]))),
            "request[1].rename_keys: not supported: key case 9"
        );
        assert!(
            rejected(&per_route_with(body(0, 0, &["a", "a..b"], &[])))
                .starts_with("request[1].remove[1]: ")
        );
        assert!(
            rejected(&per_route_with(body(0, 0, &[], &[("x", "{bad")])))
                .starts_with("request[1].add.x: value is not JSON")
        );
        assert!(
            rejected(&per_route_with(body(0, 0, &[], &[(".x", "1")])))
                .starts_with("request[1].add[\".x\"]: ")
        );
        assert!(
            rejected(&per_route_with(body(2, 1, &[], &[])))
                .starts_with("request[1].convert: json_to_xml cannot")
        );

        // A field this proxy does not know, inside a nested message: field 9 of BodyTransform.
        let mut bytes = transform_pb::BodyTransform::default().encode_to_vec();
        bytes.extend_from_slice(&[9 << 3, 1]);
        let mut outer = Vec::new();
        outer.push((2 << 3) | 2);
        outer.push(bytes.len() as u8);
        outer.extend_from_slice(&bytes);
        let any = pb::Any {
            type_url: "type.googleapis.com/tollgate.filters.http.transform.v1.TransformPerRoute"
                .into(),
            value: outer,
        };
        assert_eq!(
            rejected(&any),
            "response: not supported: unknown field 9 of tollgate.filters.http.transform.v1.BodyTransform"
        );
        let any = pb::Any {
            type_url: "type.googleapis.com/tollgate.filters.http.transform.v1.Transform".into(),
            value: vec![1 << 3, 1],
        };
        assert!(filter_config(&any).is_err());
    }
}
