//! The HTTP side: one pooled `reqwest::Client` (plus one per registry with
//! its own TLS trust), scheme selection and the authentication dance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use distd_sdk::error::ErrorKind;
use distd_sdk::reference::{DOCKER_HUB, DOCKER_HUB_API};
use distd_sdk::transport::TransportError;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Client, RequestBuilder, Response, StatusCode};

use crate::auth::{Access, AuthCache, Scheme, TokenResponse, parse_challenges, scope_key};
use crate::credentials::{Basic, Credentials};
use crate::errors::{is_tls_refusal, push_status_error, request_error, status_error, tls_error};
use crate::options::{RegistryOptions, schemes};
use crate::tls::{TlsFiles, read_pem, unusable};

/// How long the HTTPS probe of a registry that may speak plain HTTP waits:
/// such registries are on this host or the local network.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest token-server or error body read into memory.
const MAX_SMALL_BODY: usize = 1024 * 1024;

/// Talks HTTP to registries, authenticating as they ask.
pub struct Http {
    options: RegistryOptions,
    credentials: Credentials,
    default_client: Client,
    /// Clients of registries with their own TLS settings, built on first use.
    clients: Mutex<HashMap<String, Client>>,
    /// The scheme each registry that may speak plain HTTP turned out to use.
    schemes: Mutex<HashMap<String, &'static str>>,
    auth: AuthCache,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps; a panic elsewhere cannot leave them torn.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            schemes: Mutex::new(HashMap::new()),
            auth: AuthCache::default(),
        })
    }

    /// `scheme://host` of `registry`'s API. HTTPS, except that a loopback
    /// or insecure registry that does not speak TLS gets plain HTTP (found
    /// out once, by asking for `/v2/`, as Docker does). A certificate the
    /// registry presents is never a reason to fall back.
    pub async fn base_url(&self, registry: &str) -> Result<String, TransportError> {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let candidates = schemes(registry, &self.options.config(registry));
        if let [only] = candidates {
            return Ok(format!("{only}://{host}"));
        }
        if let Some(scheme) = lock(&self.schemes).get(registry) {
            return Ok(format!("{scheme}://{host}"));
        }
        let client = self.client(registry)?;
        let what = "its API root /v2/";
        let https = match client
            .get(format!("https://{host}/v2/"))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
        {
            Ok(_) => return Ok(self.found_scheme(registry, "https", host)),
            Err(e) => e,
        };
        let detail = crate::errors::chain(&https);
        tracing::debug!(registry, error = %detail, "registry does not answer HTTPS");
        if is_tls_refusal(&https) {
            return Err(tls_error(registry, what, &detail));
        }
        let http = match client.get(format!("http://{host}/v2/")).send().await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(registry, error = %crate::errors::chain(&e), "registry does not answer HTTP either");
                return Err(request_error(&https, registry, what));
            }
        };
        if http.status() == StatusCode::BAD_REQUEST {
            // Go's TLS servers answer plain HTTP so: the registry speaks TLS,
            // and the HTTPS failure is the one to report.
            let body = read_small(http, registry, what).await.unwrap_or_default();
            if String::from_utf8_lossy(&body).contains("HTTPS") {
                return Err(tls_error(registry, what, &detail));
            }
        }
        Ok(self.found_scheme(registry, "http", host))
    }

    fn found_scheme(&self, registry: &str, scheme: &'static str, host: &str) -> String {
        tracing::debug!(registry, scheme, "registry scheme found");
        lock(&self.schemes).insert(registry.to_owned(), scheme);
        format!("{scheme}://{host}")
    }

    /// The client for `registry`: the shared one unless the registry has its
    /// own CA certificates, client certificate or is insecure.
    fn client(&self, registry: &str) -> Result<Client, TransportError> {
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(registry) {
            return Ok(client.clone());
        }
        let config = self.options.config(registry);
        let tls = TlsFiles::find(registry, &config, &self.options.certs_dirs_of(registry))?;
        let client = if tls.ca_files.is_empty() && tls.identity.is_none() && !config.insecure {
            self.default_client.clone()
        } else {
            let mut b = builder(&self.options);
            for file in &tls.ca_files {
                let pem = read_pem(registry, "CA file", file)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| unusable(registry, "CA file", file, &crate::errors::chain(&e)))?;
                if certs.is_empty() {
                    return Err(unusable(
                        registry,
                        "CA file",
                        file,
                        "it holds no PEM certificate",
                    ));
                }
                for cert in certs {
                    b = b.add_root_certificate(cert);
                }
            }
            if let Some((cert, key)) = &tls.identity {
                let mut pem = read_pem(registry, "client certificate", cert)?;
                pem.push(b'\n');
                pem.extend(read_pem(registry, "client key", key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    unusable(
                        registry,
                        "client certificate",
                        cert,
                        &crate::errors::chain(&e),
                    )
                })?;
                b = b.identity(identity);
            }
            if config.insecure {
                tracing::warn!(
                    registry,
                    "TLS certificate verification is off for this registry (insecure = true)"
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
        self.send_as(registry, Access::Pull(repository), what, |client| {
            std::future::ready(Ok(build(&client)))
        })
        .await
    }

    /// [`Http::send`] with a token for `access` (pull, push or mount) and
    /// an asynchronous `build`, which may open a fresh request body for a
    /// retry after an authentication challenge. (`build` takes the client
    /// by value, a cheap clone: a future borrowing it would have to be
    /// `Send` for every lifetime, which async closures cannot promise.)
    pub async fn send_as<F>(
        &self,
        registry: &str,
        access: Access<'_>,
        what: &str,
        build: impl Fn(Client) -> F,
    ) -> Result<Response, TransportError>
    where
        F: Future<Output = Result<RequestBuilder, TransportError>>,
    {
        let client = self.client(registry)?;
        let repository = access.repository();
        let scope = scope_key(&access.scopes());
        let mut creds: Option<Option<Basic>> = None;
        let mut retried = false;
        loop {
            let mut request = build(client.clone()).await?;
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
                                access,
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
            let challenges = challenges_of(&response);
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
                    let account = match access {
                        Access::Pull(_) => String::new(),
                        _ => format!(" with an account that may push to {repository}"),
                    };
                    return Err(TransportError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "registry {registry} requires a login for {what}; \
                             run `distctl login {registry}`{account}"
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

    /// Checks `basic` against `registry` as `docker login` does: `GET /v2/`,
    /// answering a Basic challenge with them, or a Bearer challenge with a
    /// token got with them. A registry that asks for nothing accepts them.
    pub async fn check_login(&self, registry: &str, basic: &Basic) -> Result<(), TransportError> {
        let client = self.client(registry)?;
        let url = format!("{}/v2/", self.base_url(registry).await?);
        let what = "its API root /v2/";
        let refused = |status: StatusCode| {
            TransportError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "registry {registry} refused the credentials of {} ({status}); check the \
                     username and password or token",
                    basic.username
                ),
            )
        };
        let send = |request: RequestBuilder| async move {
            request
                .send()
                .await
                .map_err(|e| request_error(&e, registry, what))
        };
        let response = send(client.get(&url)).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return match response.status() {
                s if s.is_success() => Ok(()),
                s => Err(status_error(
                    s,
                    registry,
                    what,
                    &read_small(response, registry, what).await?,
                )),
            };
        }
        let challenges = challenges_of(&response);
        let answer = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer.param("realm").ok_or_else(|| {
                TransportError::new(
                    ErrorKind::Unavailable,
                    format!("registry {registry} asked for a bearer token without a realm"),
                )
            })?;
            let mut query = vec![("account", basic.username.as_str())];
            if let Some(service) = bearer.param("service") {
                query.push(("service", service));
            }
            let token_what = "a login token";
            let response = client
                .get(realm)
                .query(&query)
                .basic_auth(&basic.username, Some(&basic.password))
                .send()
                .await
                .map_err(|e| request_error(&e, registry, token_what))?;
            let status = response.status();
            let body = read_small(response, registry, token_what).await?;
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                return Err(refused(status));
            }
            if !status.is_success() {
                return Err(status_error(status, registry, token_what, &body));
            }
            let (token, _) = serde_json::from_slice::<TokenResponse>(&body)
                .ok()
                .and_then(TokenResponse::into_token)
                .ok_or_else(|| {
                    TransportError::new(
                        ErrorKind::Unavailable,
                        format!("the token server of registry {registry} answered without a token"),
                    )
                })?;
            client.get(&url).bearer_auth(token)
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            client
                .get(&url)
                .basic_auth(&basic.username, Some(&basic.password))
        } else {
            return Err(TransportError::new(
                ErrorKind::Unavailable,
                format!(
                    "registry {registry} asks for an authentication scheme distd does not speak"
                ),
            ));
        };
        let response = send(answer).await?;
        self.auth.forget_registry(registry);
        match response.status() {
            s if s.is_success() => Ok(()),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(refused(s)),
            s => Err(status_error(
                s,
                registry,
                what,
                &read_small(response, registry, what).await?,
            )),
        }
    }

    /// Forgets cached tokens and schemes of `registry` (its credentials
    /// changed).
    pub fn forget(&self, registry: &str) {
        self.auth.forget_registry(registry);
    }

    /// The credential lookup this client uses.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
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
        access: Access<'_>,
        basic: Option<Basic>,
    ) -> Result<String, TransportError> {
        let scopes = access.scopes();
        let scope = scope_key(&scopes);
        let what = format!("a token for {scope}");
        // One `scope` parameter per scope, as Docker's token servers expect.
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
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
            return Err(match access {
                Access::Pull(_) => status_error(status, registry, &what, &body),
                _ => push_status_error(status, registry, access.repository(), &what, &body),
            });
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
            .set_token(registry, &scope, token.clone(), lifetime);
        Ok(token)
    }
}

/// The authentication challenges of a 401 answer, from every
/// `WWW-Authenticate` header.
fn challenges_of(response: &Response) -> Vec<crate::auth::Challenge> {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
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
