//! The HTTP side: one pooled `reqwest::Client` (plus one per registry with
//! its own TLS trust), scheme selection and the authentication dance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use distd_sdk::error::ErrorKind;
use distd_sdk::reference::{DOCKER_HUB, DOCKER_HUB_API};
use distd_sdk::transport::TransportError;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Client, RequestBuilder, Response, StatusCode};

use crate::auth::{AuthCache, Scheme, TokenResponse, parse_challenges, pull_scope};
use crate::credentials::{Basic, Credentials};
use crate::errors::{request_error, status_error};
use crate::options::{RegistryOptions, scheme};

/// Where Docker and podman look for per-registry CA certificates.
const CERTS_D: [&str; 2] = ["/etc/docker/certs.d", "/etc/containers/certs.d"];

/// Largest token-server or error body read into memory.
const MAX_SMALL_BODY: usize = 1024 * 1024;

/// Talks HTTP to registries, authenticating as they ask.
pub struct Http {
    options: RegistryOptions,
    credentials: Credentials,
    default_client: Client,
    /// Clients of registries with their own TLS settings, built on first use.
    clients: Mutex<HashMap<String, Client>>,
    auth: AuthCache,
}

fn builder(options: &RegistryOptions) -> reqwest::ClientBuilder {
    let agent = options
        .user_agent
        .clone()
        .unwrap_or_else(|| format!("distd/{}", env!("CARGO_PKG_VERSION")));
    Client::builder()
        .user_agent(agent)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(90))
}

impl Http {
    /// A client for `options`, looking credentials up in `credentials`.
    pub fn new(options: RegistryOptions, credentials: Credentials) -> Result<Http, TransportError> {
        let default_client = builder(&options).build().map_err(|e| {
            TransportError::new(
                ErrorKind::Internal,
                format!(
                    "cannot set up the HTTP client: {}",
                    crate::errors::chain(&e)
                ),
            )
        })?;
        Ok(Http {
            options,
            credentials,
            default_client,
            clients: Mutex::new(HashMap::new()),
            auth: AuthCache::default(),
        })
    }

    /// `scheme://host` of `registry`'s API.
    pub fn base_url(&self, registry: &str) -> String {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        format!(
            "{}://{host}",
            scheme(registry, &self.options.config(registry))
        )
    }

    /// The client for `registry`: the shared one unless the registry has its
    /// own CA certificates or skips verification.
    fn client(&self, registry: &str) -> Result<Client, TransportError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(registry) {
            return Ok(client.clone());
        }
        let config = self.options.config(registry);
        let mut ca_files: Vec<PathBuf> = config.ca_file.iter().cloned().collect();
        for dir in CERTS_D {
            ca_files.extend(certs_in(&Path::new(dir).join(registry)));
        }
        let client = if ca_files.is_empty() && !config.skip_tls_verify {
            self.default_client.clone()
        } else {
            let mut b = builder(&self.options);
            for file in &ca_files {
                let invalid = |reason: String| {
                    TransportError::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "CA file {} for registry {registry} is unusable: {reason}",
                            file.display()
                        ),
                    )
                };
                let pem = std::fs::read(file).map_err(|e| invalid(e.to_string()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| invalid(crate::errors::chain(&e)))?;
                if certs.is_empty() {
                    return Err(invalid("it holds no PEM certificate".into()));
                }
                for cert in certs {
                    b = b.add_root_certificate(cert);
                }
            }
            if config.skip_tls_verify {
                tracing::warn!(
                    registry,
                    "TLS certificate verification is off for this registry"
                );
                b = b.danger_accept_invalid_certs(true);
            }
            b.build().map_err(|e| {
                TransportError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "cannot set up TLS for registry {registry}: {}",
                        crate::errors::chain(&e)
                    ),
                )
            })?
        };
        clients.insert(registry.to_owned(), client.clone());
        Ok(client)
    }

    /// Sends the request `build` makes (called again for a retry) to
    /// `registry` about `repository`, answering an authentication challenge
    /// once. Returns the response whatever its status, except that
    /// connection failures become errors; `what` names the object for
    /// messages.
    pub async fn send(
        &self,
        registry: &str,
        repository: &str,
        what: &str,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, TransportError> {
        let client = self.client(registry)?;
        let scope = pull_scope(repository);
        let mut creds: Option<Option<Basic>> = None;
        let mut retried = false;
        loop {
            let mut request = build(&client);
            match self.auth.scheme(registry) {
                Some(Scheme::Basic) => {
                    if let Some(basic) = self.creds(&mut creds, registry, repository).await {
                        request = request.basic_auth(&basic.username, Some(&basic.password));
                    }
                }
                Some(Scheme::Bearer { realm, service }) => {
                    let token = match self.auth.token(registry, &scope) {
                        Some(token) => token,
                        None => {
                            let basic = self.creds(&mut creds, registry, repository).await;
                            self.fetch_token(
                                &client,
                                registry,
                                &realm,
                                service.as_deref(),
                                &scope,
                                basic,
                            )
                            .await?
                        }
                    };
                    request = request.bearer_auth(token);
                }
                None => {}
            }
            let response = request
                .send()
                .await
                .map_err(|e| request_error(&e, registry, what))?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            retried = true;
            let challenges: Vec<_> = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
                let Some(realm) = bearer.param("realm") else {
                    return Err(TransportError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "registry {registry} asked for a bearer token without saying where to get one (no realm)"
                        ),
                    ));
                };
                tracing::debug!(registry, realm, "registry asks for bearer tokens");
                self.auth.forget_token(registry, &scope);
                self.auth.set_scheme(
                    registry,
                    Scheme::Bearer {
                        realm: realm.to_owned(),
                        service: bearer.param("service").map(str::to_owned),
                    },
                );
            } else if challenges.iter().any(|c| c.scheme == "basic") {
                if self.creds(&mut creds, registry, repository).await.is_none() {
                    return Err(TransportError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "registry {registry} requires a login for {what}; \
                             run `distctl login {registry}`"
                        ),
                    ));
                }
                tracing::debug!(registry, "registry asks for basic auth");
                self.auth.set_scheme(registry, Scheme::Basic);
            } else {
                return Ok(response);
            }
        }
    }

    async fn creds(
        &self,
        cache: &mut Option<Option<Basic>>,
        registry: &str,
        repository: &str,
    ) -> Option<Basic> {
        if cache.is_none() {
            *cache = Some(self.credentials.lookup(registry, repository).await);
        }
        cache.clone().flatten()
    }

    async fn fetch_token(
        &self,
        client: &Client,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        basic: Option<Basic>,
    ) -> Result<String, TransportError> {
        let what = format!("a token for {scope}");
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = client.get(realm).query(&query);
        if let Some(basic) = &basic {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_error(&e, registry, &what))?;
        let status = response.status();
        let body = read_small(response, registry, &what).await?;
        if !status.is_success() {
            return Err(status_error(status, registry, &what, &body));
        }
        let (token, lifetime) = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| {
                TransportError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the token server of registry {registry} ({realm}) answered without a token"
                    ),
                )
            })?;
        self.auth
            .set_token(registry, scope, token.clone(), lifetime);
        Ok(token)
    }
}

/// Reads a body of at most [`MAX_SMALL_BODY`] bytes (more is cut off).
pub async fn read_small(
    mut response: Response,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, TransportError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(&e, registry, what))?
    {
        let room = MAX_SMALL_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_SMALL_BODY {
            break;
        }
    }
    Ok(body)
}

/// The `*.crt` files of a certs.d directory, sorted; none when it is absent.
fn certs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    out.sort();
    out
}
