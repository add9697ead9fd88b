//! A connection manager's `access_log`: the one shape Tollgate's control plane emits, a stdout
//! or file logger with a JSON format whose values are each one command operator. The data path
//! writes the lines ([`crate::access_log`]).

use std::path::PathBuf;

use tollgate_proto::envoy::config::accesslog::v3 as accesslog_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::extensions::access_loggers::file::v3 as file_log_pb;
use tollgate_proto::envoy::extensions::access_loggers::stream::v3 as stream_log_pb;
use tollgate_proto::google::protobuf as pb;

use super::{decode, is_type, unsupported_extension};
use crate::config::{Reason, Rejection, Within as _, no_control_chars, reject_set};

/// An access log: where lines go and what each holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where the lines are written.
    pub sink: AccessLogSink,
    /// The JSON object of each line: keys (sorted, as Envoy writes them) and their values.
    pub fields: Vec<(String, AccessLogField)>,
}

/// Where an access log's lines are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogSink {
    /// The process's standard output (`envoy.access_loggers.stdout`).
    Stdout,
    /// A file, opened for appending and created if missing (`envoy.access_loggers.file`).
    File(PathBuf),
}

/// The value of an access log field: one of Envoy's command operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogField {
    /// `%START_TIME%`: when the request started, RFC 3339 UTC with milliseconds.
    StartTime,
    /// `%REQ(X-REQUEST-ID)%`.
    RequestId,
    /// `%REQ(:METHOD)%`.
    Method,
    /// `%REQ(:AUTHORITY)%`.
    Authority,
    /// `%PATH(NQ)%`: the path as routed (normalised, before rewrites), without the query.
    Path,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the same path with its query.
    PathWithQuery,
    /// `%PROTOCOL%`: `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// `%RESPONSE_CODE%`, a number.
    ResponseCode,
    /// `%BYTES_RECEIVED%`: request body bytes, a number.
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes, a number.
    BytesSent,
    /// `%DURATION%`: milliseconds from the request's start to its last response byte.
    Duration,
    /// `%UPSTREAM_HOST%`: `ip:port` of the last attempt's endpoint.
    UpstreamHost,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:consumer)%`: the API key's consumer.
    Consumer,
    /// `%DYNAMIC_METADATA(envoy.filters.http.ratelimit:quota)%`: the request's quota decision
    /// ([`tollgate_quota::PolicyOutcome`]).
    Quota,
}

impl AccessLogField {
    /// Every field, for lookups by operator.
    const ALL: [AccessLogField; 16] = [
        Self::StartTime,
        Self::RequestId,
        Self::Method,
        Self::Authority,
        Self::Path,
        Self::PathWithQuery,
        Self::Protocol,
        Self::ResponseCode,
        Self::BytesReceived,
        Self::BytesSent,
        Self::Duration,
        Self::UpstreamHost,
        Self::RouteName,
        Self::UpstreamCluster,
        Self::Consumer,
        Self::Quota,
    ];

    /// The command operator, exactly as the control plane writes it.
    pub fn operator(self) -> &'static str {
        match self {
            Self::StartTime => "%START_TIME%",
            Self::RequestId => "%REQ(X-REQUEST-ID)%",
            Self::Method => "%REQ(:METHOD)%",
            Self::Authority => "%REQ(:AUTHORITY)%",
            Self::Path => "%PATH(NQ)%",
            Self::PathWithQuery => "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            Self::Protocol => "%PROTOCOL%",
            Self::ResponseCode => "%RESPONSE_CODE%",
            Self::BytesReceived => "%BYTES_RECEIVED%",
            Self::BytesSent => "%BYTES_SENT%",
            Self::Duration => "%DURATION%",
            Self::UpstreamHost => "%UPSTREAM_HOST%",
            Self::RouteName => "%ROUTE_NAME%",
            Self::UpstreamCluster => "%UPSTREAM_CLUSTER%",
            Self::Consumer => "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:consumer)%",
            Self::Quota => "%DYNAMIC_METADATA(envoy.filters.http.ratelimit:quota)%",
        }
    }

    fn from_operator(operator: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.operator() == operator)
    }
}

/// Reads the connection manager's `access_log`: at most one logger.
pub(super) fn access_logs(
    logs: &[accesslog_pb::AccessLog],
) -> Result<Option<AccessLogConfig>, Rejection> {
    match logs {
        [] => Ok(None),
        [log] => access_log(log).at("access_log", 0).map(Some),
        [_, _, ..] => Err(Rejection::new_at(
            "access_log",
            1,
            Reason::UnsupportedValue("more than one access logger".into()),
        )),
    }
}

fn access_log(proto: &accesslog_pb::AccessLog) -> Result<AccessLogConfig, Rejection> {
    use accesslog_pb::access_log::ConfigType;
    let accesslog_pb::AccessLog {
        // Cosmetic: Envoy picks the logger by its config's type.
        name,
        filter,
        config_type,
    } = proto;
    reject_set(&[(filter.is_some(), "filter")])?;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(Rejection::new("typed_config", Reason::Missing)),
    };
    let (sink, format) = if is_type::<stream_log_pb::StdoutAccessLog>(any) {
        let stream_log_pb::StdoutAccessLog { access_log_format } =
            decode(any).within("typed_config")?;
        let format = match access_log_format {
            Some(stream_log_pb::stdout_access_log::AccessLogFormat::LogFormat(format)) => format,
            // Envoy's default text format, which this proxy does not write.
            None => {
                return Err(Rejection::new("log_format", Reason::Missing).within("typed_config"));
            }
        };
        (AccessLogSink::Stdout, format)
    } else if is_type::<file_log_pb::FileAccessLog>(any) {
        file_log(&decode(any).within("typed_config")?).within("typed_config")?
    } else {
        return Err(unsupported_extension("access logger", name, any));
    };
    let fields = json_format(&format)
        .within("log_format")
        .within("typed_config")?;
    Ok(AccessLogConfig { sink, fields })
}

#[allow(deprecated)] // deprecated formats still change the output when set: they must be read
fn file_log(
    proto: &file_log_pb::FileAccessLog,
) -> Result<(AccessLogSink, core_pb::SubstitutionFormatString), Rejection> {
    use file_log_pb::file_access_log::AccessLogFormat;
    let file_log_pb::FileAccessLog {
        path,
        access_log_format,
    } = proto;
    if path.is_empty() {
        return Err(Rejection::new("path", Reason::Missing));
    }
    no_control_chars(path).map_err(|r| Rejection::new("path", r))?;
    let format = match access_log_format {
        Some(AccessLogFormat::LogFormat(format)) => format.clone(),
        None => return Err(Rejection::new("log_format", Reason::Missing)),
        Some(AccessLogFormat::Format(_)) => return Err(Rejection::unsupported("format")),
        Some(AccessLogFormat::JsonFormat(_)) => return Err(Rejection::unsupported("json_format")),
        Some(AccessLogFormat::TypedJsonFormat(_)) => {
            return Err(Rejection::unsupported("typed_json_format"));
        }
    };
    Ok((AccessLogSink::File(PathBuf::from(path)), format))
}

/// A `json_format` whose values are each exactly one supported command operator.
#[allow(deprecated)] // deprecated fields still change the output when set: they must be read
fn json_format(
    proto: &core_pb::SubstitutionFormatString,
) -> Result<Vec<(String, AccessLogField)>, Rejection> {
    use core_pb::substitution_format_string::Format;
    let core_pb::SubstitutionFormatString {
        omit_empty_values,
        content_type,
        formatters,
        json_format_options,
        format,
    } = proto;
    reject_set(&[
        (*omit_empty_values, "omit_empty_values"),
        (!content_type.is_empty(), "content_type"),
        (!formatters.is_empty(), "formatters"),
        (
            json_format_options
                .as_ref()
                .is_some_and(|core_pb::JsonFormatOptions { sort_properties }| *sort_properties),
            "json_format_options",
        ),
    ])?;
    let json = match format {
        Some(Format::JsonFormat(json)) => json,
        None => return Err(Rejection::new("json_format", Reason::Missing)),
        Some(Format::TextFormat(_)) => return Err(Rejection::unsupported("text_format")),
        Some(Format::TextFormatSource(_)) => {
            return Err(Rejection::unsupported("text_format_source"));
        }
    };
    let pb::Struct { fields } = json;
    if fields.is_empty() {
        return Err(Rejection::new("json_format", Reason::Missing));
    }
    let mut out = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let field =
            json_value(value).map_err(|r| Rejection::new_key(key, r).within("json_format"))?;
        out.push((key.clone(), field));
    }
    // The `Struct` is a hash map: sort, so that equal configs compare equal and lines read
    // alike, and as Envoy writes them.
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn json_value(value: &pb::Value) -> Result<AccessLogField, Reason> {
    let pb::Value { kind } = value;
    match kind {
        Some(pb::value::Kind::StringValue(operator)) => AccessLogField::from_operator(operator)
            .ok_or_else(|| Reason::Invalid(format!("unsupported command operator {operator}"))),
        _ => Err(Reason::Invalid(
            "must be a string holding one command operator".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::pack_any;

    use super::*;
    use crate::config::Resource;

    fn json(fields: &[(&str, &str)]) -> core_pb::SubstitutionFormatString {
        core_pb::SubstitutionFormatString {
            format: Some(core_pb::substitution_format_string::Format::JsonFormat(
                pb::Struct {
                    fields: fields
                        .iter()
                        .map(|(k, v)| {
                            let value = pb::Value {
                                kind: Some(pb::value::Kind::StringValue((*v).to_owned())),
                            };
                            ((*k).to_owned(), value)
                        })
                        .collect(),
                },
            )),
            ..Default::default()
        }
    }

    fn file(path: &str, format: core_pb::SubstitutionFormatString) -> accesslog_pb::AccessLog {
        let config = file_log_pb::FileAccessLog {
            path: path.into(),
            access_log_format: Some(file_log_pb::file_access_log::AccessLogFormat::LogFormat(
                format,
            )),
        };
        logger("envoy.access_loggers.file", pack_any(&config))
    }

    fn logger(name: &str, any: pb::Any) -> accesslog_pb::AccessLog {
        accesslog_pb::AccessLog {
            name: name.into(),
            filter: None,
            config_type: Some(accesslog_pb::access_log::ConfigType::TypedConfig(any)),
        }
    }

    /// The NACK text for `logs`.
    fn rejected(logs: &[accesslog_pb::AccessLog]) -> String {
        let rejection = access_logs(logs).expect_err("should be rejected");
        let error = rejection.into_error(Resource::Listener("l".into()));
        format!("{}: {}", error.field, error.reason)
    }

    #[test]
    fn reads_a_file_logger_with_fields_sorted() {
        let logs = [file(
            "/var/log/access.log",
            json(&[
                ("status", "%RESPONSE_CODE%"),
                ("path", "%PATH(NQ)%"),
                ("full_path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
            ]),
        )];
        assert_eq!(
            access_logs(&logs).unwrap(),
            Some(AccessLogConfig {
                sink: AccessLogSink::File("/var/log/access.log".into()),
                fields: vec![
                    ("full_path".into(), AccessLogField::PathWithQuery),
                    ("path".into(), AccessLogField::Path),
                    ("status".into(), AccessLogField::ResponseCode),
                ],
            })
        );
        assert_eq!(access_logs(&[]).unwrap(), None);
    }

    #[test]
    fn reads_a_stdout_logger() {
        let config = stream_log_pb::StdoutAccessLog {
            access_log_format: Some(
                stream_log_pb::stdout_access_log::AccessLogFormat::LogFormat(json(&[(
                    "t",
                    "%START_TIME%",
                )])),
            ),
        };
        let logs = [logger("envoy.access_loggers.stdout", pack_any(&config))];
        let config = access_logs(&logs).unwrap().unwrap();
        assert_eq!(config.sink, AccessLogSink::Stdout);
        assert_eq!(config.fields, [("t".into(), AccessLogField::StartTime)]);
    }

    #[test]
    fn every_operator_round_trips() {
        for field in AccessLogField::ALL {
            assert_eq!(AccessLogField::from_operator(field.operator()), Some(field));
        }
    }

    #[test]
    fn rejections_name_the_field() {
        let format_field = "access_log[0].typed_config.log_format";
        assert_eq!(
            rejected(&[file("/a", json(&[("foo", "%FOO%")]))]),
            format!("{format_field}.json_format.foo: unsupported command operator %FOO%")
        );
        // An operator among text, or with a length limit, is not one the proxy fills.
        assert_eq!(
            rejected(&[file("/a", json(&[("p", "path=%PATH(NQ)%")]))]),
            format!("{format_field}.json_format.p: unsupported command operator path=%PATH(NQ)%")
        );
        assert_eq!(
            rejected(&[file("/a", json(&[("a b", "%FOO%")]))]),
            format!("{format_field}.json_format[\"a b\"]: unsupported command operator %FOO%")
        );
        let mut nested = json(&[]);
        if let Some(core_pb::substitution_format_string::Format::JsonFormat(s)) = &mut nested.format
        {
            s.fields.insert(
                "n".into(),
                pb::Value {
                    kind: Some(pb::value::Kind::NumberValue(1.0)),
                },
            );
        }
        assert_eq!(
            rejected(&[file("/a", nested)]),
            format!("{format_field}.json_format.n: must be a string holding one command operator")
        );
        assert_eq!(
            rejected(&[file("/a", json(&[]))]),
            format!("{format_field}.json_format: is required")
        );
        let omit = core_pb::SubstitutionFormatString {
            omit_empty_values: true,
            ..json(&[("t", "%START_TIME%")])
        };
        assert_eq!(
            rejected(&[file("/a", omit)]),
            format!("{format_field}.omit_empty_values: not supported")
        );
        #[allow(deprecated)]
        let text = core_pb::SubstitutionFormatString {
            format: Some(core_pb::substitution_format_string::Format::TextFormat(
                "%START_TIME%\n".into(),
            )),
            ..Default::default()
        };
        assert_eq!(
            rejected(&[file("/a", text)]),
            format!("{format_field}.text_format: not supported")
        );
        assert_eq!(
            rejected(&[file("", json(&[("t", "%START_TIME%")]))]),
            "access_log[0].typed_config.path: is required"
        );
        let mut filtered = file("/a", json(&[("t", "%START_TIME%")]));
        filtered.filter = Some(Default::default());
        assert_eq!(rejected(&[filtered]), "access_log[0].filter: not supported");
        let two = file("/a", json(&[("t", "%START_TIME%")]));
        assert_eq!(
            rejected(&[two.clone(), two]),
            "access_log[1]: not supported: more than one access logger"
        );
        let stderr = logger(
            "envoy.access_loggers.stderr",
            pack_any(&stream_log_pb::StderrAccessLog::default()),
        );
        assert_eq!(
            rejected(&[stderr]),
            "access_log[0].typed_config: not supported: access logger \
             \"envoy.access_loggers.stderr\" \
             (type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog)"
        );
        let default_format = logger(
            "envoy.access_loggers.stdout",
            pack_any(&stream_log_pb::StdoutAccessLog::default()),
        );
        assert_eq!(
            rejected(&[default_format]),
            "access_log[0].typed_config.log_format: is required"
        );
    }
}
