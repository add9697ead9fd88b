//! Validated configuration: where xDS resources (prost messages) become the proxy's own types.
//!
//! This sits between the xDS client and the data path. Each resource the control plane sends
//! goes through a `TryFrom` here; one that fails is NACKed with the [`ConfigError`] message and
//! the last good snapshot keeps serving. Nothing past this module touches prost types.
//!
//! RDS becomes a [`route::RouteTable`], CDS and EDS [`cluster::Cluster`] and
//! [`cluster::Endpoints`], LDS a [`listener::Listener`] and SDS a [`listener::Secret`] (a
//! TLS certificate, or an API-key table).
//!
//! The rule throughout is Envoy's behaviour, or a NACK. A field that would change how a request
//! is handled and is not implemented here rejects the resource, naming the field. Ignoring it
//! would make the proxy answer differently from an Envoy given the same snapshot. Only purely
//! cosmetic fields (names, stat prefixes, metadata, decorators) are skipped.

pub mod cluster;
pub mod filters;
pub mod format;
mod http_options;
pub mod listener;
pub mod route;

use std::fmt;

/// Why an xDS resource was rejected; its message is the NACK's `error_detail`.
///
/// It reads `route config public: virtual_hosts[0].routes[2].match.safe_regex: invalid regex: …`:
/// the resource, then the path of the offending proto field, then what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {reason}")]
pub struct ConfigError {
    /// The rejected resource.
    pub resource: Resource,
    /// Path of the offending field in the proto, e.g. `virtual_hosts[0].routes[1].route.timeout`.
    pub field: String,
    /// What is wrong with it.
    pub reason: Reason,
}

/// The resource a [`ConfigError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// An RDS `RouteConfiguration`, by name.
    RouteConfig(String),
    /// A CDS `Cluster`, by name.
    Cluster(String),
    /// An EDS `ClusterLoadAssignment`, by cluster name.
    Endpoints(String),
    /// An LDS `Listener`, by name.
    Listener(String),
    /// An SDS `Secret`, by name.
    Secret(String),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RouteConfig(name) => write!(f, "route config {name}"),
            Self::Cluster(name) => write!(f, "cluster {name}"),
            Self::Endpoints(name) => write!(f, "endpoints of cluster {name}"),
            Self::Listener(name) => write!(f, "listener {name}"),
            Self::Secret(name) => write!(f, "secret {name}"),
        }
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The field is set, and the proxy does not implement it.
    #[error("not supported")]
    Unsupported,
    /// The field is set to a value the proxy does not implement.
    #[error("not supported: {0}")]
    UnsupportedValue(String),
    /// A required field is missing or empty.
    #[error("is required")]
    Missing,
    /// A regular expression that does not compile, or is too large.
    #[error("invalid regex: {0}")]
    InvalidRegex(String),
    /// Two virtual hosts (or one, twice) claim the same domain.
    #[error("duplicate domain {domain:?}, already in virtual_hosts[{first}]")]
    DuplicateDomain {
        /// The domain, lower-cased as it is matched.
        domain: String,
        /// Index of the virtual host that claimed it first.
        first: usize,
    },
    /// Any other invalid value; the message says why.
    #[error("{0}")]
    Invalid(String),
}

/// A rejected field on its way up from where it was found: each level of the proto that the
/// error passes through prepends its own field name, so the full path is only built on failure.
#[derive(Debug)]
pub(crate) struct Rejection {
    /// Path segments, innermost first.
    path: Vec<Segment>,
    reason: Reason,
}

#[derive(Debug)]
enum Segment {
    Field(&'static str),
    Index(usize),
    /// A key of a map or `Struct` (e.g. an access log's `json_format`).
    Key(String),
}

impl Rejection {
    /// `field` of the message being read is wrong.
    pub(crate) fn new(field: &'static str, reason: Reason) -> Self {
        Self {
            path: vec![Segment::Field(field)],
            reason,
        }
    }

    /// Element `index` of the repeated `field` is wrong.
    pub(crate) fn new_at(field: &'static str, index: usize, reason: Reason) -> Self {
        Self {
            path: vec![Segment::Index(index), Segment::Field(field)],
            reason,
        }
    }

    /// The value being read is wrong as a whole; the enclosing levels add the path.
    pub(crate) fn here(reason: Reason) -> Self {
        Self {
            path: Vec::new(),
            reason,
        }
    }

    /// `field` is set, and the proxy does not implement it.
    pub(crate) fn unsupported(field: &'static str) -> Self {
        Self::new(field, Reason::Unsupported)
    }

    /// Adds the enclosing message's field to the path.
    pub(crate) fn within(mut self, field: &'static str) -> Self {
        self.path.push(Segment::Field(field));
        self
    }

    /// Adds the enclosing repeated field and the element's index to the path.
    pub(crate) fn at(mut self, field: &'static str, index: usize) -> Self {
        self.path.push(Segment::Index(index));
        self.path.push(Segment::Field(field));
        self
    }

    /// Adds the key of the enclosing map under which the wrong value sits.
    pub(crate) fn key(mut self, key: &str) -> Self {
        self.path.push(Segment::Key(key.to_owned()));
        self
    }

    /// The value under `key` of the map being read is wrong.
    pub(crate) fn new_key(key: &str, reason: Reason) -> Self {
        Self {
            path: vec![Segment::Key(key.to_owned())],
            reason,
        }
    }

    /// The error for the whole resource.
    pub(crate) fn into_error(self, resource: Resource) -> ConfigError {
        let mut field = String::new();
        for segment in self.path.iter().rev() {
            match segment {
                Segment::Field(name) => {
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(name);
                }
                Segment::Index(i) => {
                    use std::fmt::Write as _;
                    let _ = write!(field, "[{i}]");
                }
                // A plain key reads as a field; any other is quoted, so the path stays
                // unambiguous.
                Segment::Key(key) => {
                    if !key.is_empty()
                        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        field.push('.');
                        field.push_str(key);
                    } else {
                        use std::fmt::Write as _;
                        let _ = write!(field, "[{key:?}]");
                    }
                }
            }
        }
        ConfigError {
            resource,
            field,
            reason: self.reason,
        }
    }
}

/// [`Rejection::within`] and [`Rejection::at`] on results, so building code reads `….at("routes", i)?`.
pub(crate) trait Within {
    /// See [`Rejection::within`].
    fn within(self, field: &'static str) -> Self;
    /// See [`Rejection::at`].
    fn at(self, field: &'static str, index: usize) -> Self;
}

impl<T> Within for Result<T, Rejection> {
    fn within(self, field: &'static str) -> Self {
        self.map_err(|e| e.within(field))
    }

    fn at(self, field: &'static str, index: usize) -> Self {
        self.map_err(|e| e.at(field, index))
    }
}

/// A proto `Duration` as a std one; negative or malformed durations are invalid.
pub(crate) fn duration(
    d: &tollgate_proto::google::protobuf::Duration,
) -> Result<std::time::Duration, Reason> {
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err(Reason::Invalid("must not be negative".into()));
    };
    if nanos >= 1_000_000_000 {
        return Err(Reason::Invalid("nanos must be below one second".into()));
    }
    Ok(std::time::Duration::new(secs, nanos))
}

/// Refuses values that would split or truncate a header or log line.
pub(crate) fn no_control_chars(value: &str) -> Result<(), Reason> {
    if value.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        Err(Reason::Invalid(format!("{value:?} contains NUL, CR or LF")))
    } else {
        Ok(())
    }
}

/// Rejects `field` as unsupported when `set`; for fields whose mere presence changes behaviour.
pub(crate) fn reject_if(set: bool, field: &'static str) -> Result<(), Rejection> {
    if set {
        Err(Rejection::unsupported(field))
    } else {
        Ok(())
    }
}

/// [`reject_if`] over a list of `(set, field)`: rejects the first field that is set.
pub(crate) fn reject_set(fields: &[(bool, &'static str)]) -> Result<(), Rejection> {
    match fields.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(Rejection::unsupported(field)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_built_outside_in() {
        let err = Rejection::new("safe_regex", Reason::InvalidRegex("oops".into()))
            .within("match")
            .at("routes", 2)
            .at("virtual_hosts", 0)
            .into_error(Resource::RouteConfig("public".into()));
        assert_eq!(
            err.to_string(),
            "route config public: virtual_hosts[0].routes[2].match.safe_regex: invalid regex: oops"
        );
        let err = Rejection::new_at("domains", 3, Reason::Missing)
            .into_error(Resource::RouteConfig("r".into()));
        assert_eq!(err.field, "domains[3]");
    }
}
