//! Registry authentication: `WWW-Authenticate` challenges and the bearer
//! token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token lives when the token server does not say.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased: `bearer`, `basic`.
    pub scheme: String,
    /// Parameters with lower-cased names (`realm`, `service`, `scope`).
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value: one or more challenges, each a scheme
/// followed by comma-separated `name=value` or `name="quoted \"value\""`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        // A token followed by '=' is a parameter of the current challenge;
        // a token followed by a space or the end is a new scheme.
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let (token, after) = rest.split_at(token_end);
        if token.is_empty() {
            break;
        }
        if let Some(value_part) = after.trim_start().strip_prefix('=') {
            let value_part = value_part.trim_start();
            let (value, remaining) = parse_value(value_part);
            if let Some(current) = out.last_mut() {
                current.params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: HashMap::new(),
            });
            rest = after;
        }
    }
    out
}

/// A quoted or bare parameter value and what follows it.
fn parse_value(input: &str) -> (String, &str) {
    if let Some(quoted) = input.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                other => value.push(other),
            }
        }
        (value, "")
    } else {
        let end = input.find(',').unwrap_or(input.len());
        (input[..end].trim().to_owned(), &input[end..])
    }
}

/// The pull scope of a repository.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The pull-and-push scope of a repository.
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// What a request needs its bearer token to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Reading `repository`.
    Pull(&'a str),
    /// Reading and writing `repository`.
    Push(&'a str),
    /// Writing `repository` and reading `from`, to mount a blob of `from`
    /// into `repository`.
    Mount {
        /// Where the blob goes.
        repository: &'a str,
        /// Where the blob is.
        from: &'a str,
    },
}

impl Access<'_> {
    /// The repository the request is about (whose credentials it uses).
    pub fn repository(&self) -> &str {
        match self {
            Access::Pull(repository) | Access::Push(repository) => repository,
            Access::Mount { repository, .. } => repository,
        }
    }

    /// The scopes to ask the token server for, one `scope` parameter each.
    pub fn scopes(&self) -> Vec<String> {
        match *self {
            Access::Pull(repository) => vec![pull_scope(repository)],
            Access::Push(repository) => vec![push_scope(repository)],
            Access::Mount { repository, from } if from == repository => {
                vec![push_scope(repository)]
            }
            Access::Mount { repository, from } => vec![push_scope(repository), pull_scope(from)],
        }
    }
}

/// The key a token for `scopes` is cached under: the scopes joined by
/// spaces, as OAuth2 writes a set of scopes.
pub fn scope_key(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// What a registry asked for last time, so later requests authenticate
/// up front instead of collecting a 401 first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Basic auth with the looked-up credentials.
    Basic,
    /// Bearer tokens from `realm` for `service`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to ask the token for.
        service: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// Per-registry schemes and per-(registry, scope) bearer tokens.
#[derive(Debug, Default)]
pub struct AuthCache {
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
}

impl AuthCache {
    /// The scheme `registry` challenged with last.
    pub fn scheme(&self, registry: &str) -> Option<Scheme> {
        lock(&self.schemes).get(registry).cloned()
    }

    /// Remembers `registry`'s scheme.
    pub fn set_scheme(&self, registry: &str, scheme: Scheme) {
        lock(&self.schemes).insert(registry.to_owned(), scheme);
    }

    /// A cached token still valid for at least a few seconds.
    pub fn token(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = lock(&self.tokens);
        let token = tokens.get(&(registry.to_owned(), scope.to_owned()))?;
        (token.expires > Instant::now() + Duration::from_secs(5)).then(|| token.value.clone())
    }

    /// Caches a token for `lifetime`.
    pub fn set_token(&self, registry: &str, scope: &str, value: String, lifetime: Duration) {
        lock(&self.tokens).insert(
            (registry.to_owned(), scope.to_owned()),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
    }

    /// Drops what is known of `registry`'s authentication, after its
    /// credentials changed.
    pub fn forget_registry(&self, registry: &str) {
        lock(&self.schemes).remove(registry);
        lock(&self.tokens).retain(|(host, _), _| host != registry);
    }

    /// Drops a token the registry refused.
    pub fn forget_token(&self, registry: &str, scope: &str) {
        lock(&self.tokens).remove(&(registry.to_owned(), scope.to_owned()));
    }
}

/// Locks a mutex, recovering from a poisoned one: the maps stay consistent
/// because every critical section is a single insert, get or remove.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A token server's answer.
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    /// The token (Distribution's name).
    pub token: Option<String>,
    /// The token (OAuth2's name).
    pub access_token: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime (at least 60 s, as the spec says).
    pub fn into_token(self) -> Option<(String, Duration)> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, |s| {
            Duration::from_secs(s).max(DEFAULT_TOKEN_LIFETIME)
        });
        Some((value, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn basic_bare_values_escapes_and_several_challenges() {
        let c = parse_challenges(
            r#"Basic realm="Registry \"Realm\"", Bearer realm=https://t/x , service=s"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "Realm""#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t/x"));
        assert_eq!(c[1].param("service"), Some("s"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].params.len(), 0);
        // Unterminated quotes do not panic.
        assert_eq!(
            parse_challenges(r#"Bearer realm="x"#)[0].param("realm"),
            Some("x")
        );
    }

    #[test]
    fn access_scopes() {
        assert_eq!(Access::Pull("a/b").scopes(), ["repository:a/b:pull"]);
        assert_eq!(Access::Push("a/b").scopes(), ["repository:a/b:pull,push"]);
        let mount = Access::Mount {
            repository: "a/b",
            from: "c",
        };
        assert_eq!(mount.repository(), "a/b");
        assert_eq!(
            scope_key(&mount.scopes()),
            "repository:a/b:pull,push repository:c:pull"
        );
        let same = Access::Mount {
            repository: "a",
            from: "a",
        };
        assert_eq!(same.scopes(), ["repository:a:pull,push"]);
        assert_eq!(scope_key(&Access::Pull("x").scopes()), pull_scope("x"));
    }

    #[test]
    fn tokens_expire_and_default_to_sixty_seconds() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("a".into(), DEFAULT_TOKEN_LIFETIME)));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"t","expires_in":300}"#).unwrap();
        assert_eq!(r.into_token(), Some(("t".into(), Duration::from_secs(300))));
        let cache = AuthCache::default();
        cache.set_token("r", "s", "v".into(), Duration::from_secs(60));
        assert_eq!(cache.token("r", "s").as_deref(), Some("v"));
        assert_eq!(cache.token("r", "other"), None);
        cache.set_token("r", "s", "v".into(), Duration::from_secs(1));
        assert_eq!(
            cache.token("r", "s"),
            None,
            "a token about to expire is not used"
        );
        cache.forget_token("r", "s");
        assert_eq!(cache.token("r", "s"), None);
    }
}
