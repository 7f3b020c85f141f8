//! Image references, parsed by the distribution grammar and normalized the
//! way Docker and containerd do: `alpine` is `docker.io/library/alpine:latest`.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]        (a first component with "." or ":",
//!                                         or "localhost", is a domain)
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry a reference without a domain names.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag a reference with neither tag nor digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// Longest name (domain and path) the grammar allows.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid reference; each says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("empty image reference")]
    Empty,
    /// The name part breaks the grammar.
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// The digest part is malformed.
    #[error("invalid image reference {input:?}: {source}")]
    Digest {
        /// The input.
        input: String,
        /// The digest problem.
        source: DigestError,
    },
}

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `input`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::parse(digest).map_err(|source| ReferenceError::Digest {
                    input: input.to_owned(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| invalid(&reason))?;
        }
        if name.is_empty() {
            return Err(invalid("the repository name is missing"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_domain(first).map_err(|reason| invalid(&reason))?;
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        for component in path.split('/') {
            check_path_component(component).map_err(|reason| invalid(&reason))?;
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written (normalized), e.g. `docker.io`, `host:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host that serves the registry API (`registry-1.docker.io` for
    /// Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if pinned.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The name without tag or digest, e.g. `docker.io/library/alpine`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(format!(
            "tag {tag:?} must be 1 to 128 of A-Z a-z 0-9 _ . - and not start with . or -"
        ));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // An IPv6 literal: [::1]:5000
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("registry {domain:?} has an unclosed IPv6 bracket"));
        };
        if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("registry {domain:?} is not a valid IPv6 literal"));
        }
        (None, after.strip_prefix(':').map(Some).unwrap_or(None))
    } else {
        match domain.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!(
                "registry host in {domain:?} is not a valid host name"
            ));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("registry port in {domain:?} is not a port number"));
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "repository component {component:?} must be lower-case letters and digits, \
             separated by '.', '_', '__' or dashes"
        )
    };
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parsed(input: &str) -> String {
        Reference::parse(input).unwrap().to_string()
    }

    #[test]
    fn short_names_normalize_like_docker() {
        assert_eq!(parsed("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(parsed("user/app:1.0"), "docker.io/user/app:1.0");
        assert_eq!(
            parsed("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        let hub = Reference::parse("alpine").unwrap();
        assert_eq!(hub.api_host(), DOCKER_HUB_API);
    }

    #[test]
    fn domains_ports_tags_and_digests() {
        let r = Reference::parse("localhost:5000/a/b:tag").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("tag"))
        );
        assert_eq!(r.api_host(), "localhost:5000");
        let pinned = Reference::parse(&format!("reg.example.com/app@{DIGEST}")).unwrap();
        assert_eq!(pinned.tag(), None);
        assert_eq!(
            pinned.digest().map(ToString::to_string).as_deref(),
            Some(DIGEST)
        );
        let both = Reference::parse(&format!("app:1@{DIGEST}")).unwrap();
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/app:1@{DIGEST}")
        );
        assert_eq!(parsed("[::1]:5000/app"), "[::1]:5000/app:latest");
        assert_eq!(parsed("localhost/app"), "localhost/app:latest");
        assert_eq!(
            parsed("a__b/c-d--e/f.g"),
            "docker.io/a__b/c-d--e/f.g:latest"
        );
    }

    #[test]
    fn malformed_references_say_why() {
        for bad in [
            "",
            "UPPER/case",
            "app:",
            "app:-tag",
            "app@sha256:short",
            "app@md5:d41d8cd98f00b204e9800998ecf8427e",
            "host:99999/app",
            "a/../b",
            "/app",
            "app/",
            "a..b",
            "a___b",
            "reg.example.com/",
            "bad_host.com:5000/app",
        ] {
            let err = Reference::parse(bad);
            assert!(err.is_err(), "{bad:?} was accepted as {:?}", err.ok());
        }
        let long = format!("{}/app", "a".repeat(300));
        assert!(
            Reference::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
    }
}
