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
use crate::errors::{is_certificate_error, request_error, status_error};
use crate::options::{RegistryConfig, RegistryOptions, schemes};

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
        let mut first_error: Option<TransportError> = None;
        for scheme in candidates {
            match client.get(format!("{scheme}://{host}/v2/")).send().await {
                Ok(_) => {
                    tracing::debug!(registry, scheme, "registry scheme found");
                    lock(&self.schemes).insert(registry.to_owned(), scheme);
                    return Ok(format!("{scheme}://{host}"));
                }
                Err(e) => {
                    let certificate = is_certificate_error(&e);
                    let error = request_error(&e, registry, what);
                    tracing::debug!(registry, scheme, error = %error.message, "registry probe failed");
                    let error = first_error.get_or_insert(error);
                    if certificate {
                        return Err(error.clone());
                    }
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            TransportError::new(
                ErrorKind::Internal,
                format!("no scheme to try for {registry}"),
            )
        }))
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

/// The TLS material of one registry: from its settings, then its certs.d
/// directories.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsFiles {
    /// CA certificates to trust besides the system's.
    ca_files: Vec<PathBuf>,
    /// Client certificate and key.
    identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    fn find(
        registry: &str,
        config: &RegistryConfig,
        dirs: &[PathBuf],
    ) -> Result<TlsFiles, TransportError> {
        let mut ca_files: Vec<PathBuf> = config.ca_file.iter().cloned().collect();
        for dir in dirs {
            ca_files.extend(files_ending(dir, "crt"));
        }
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => match dirs.iter().flat_map(|dir| files_ending(dir, "cert")).next() {
                Some(cert) => {
                    let key = cert.with_extension("key");
                    if !key.is_file() {
                        return Err(unusable(
                            registry,
                            "client certificate",
                            &cert,
                            &format!("its key {} is missing", key.display()),
                        ));
                    }
                    Some((cert, key))
                }
                None => None,
            },
            _ => {
                return Err(TransportError::new(
                    ErrorKind::InvalidArgument,
                    format!("registry {registry}: set both client_cert and client_key, or neither"),
                ));
            }
        };
        Ok(TlsFiles { ca_files, identity })
    }
}

fn unusable(registry: &str, what: &str, file: &Path, reason: &str) -> TransportError {
    TransportError::new(
        ErrorKind::InvalidArgument,
        format!(
            "{what} {} for registry {registry} is unusable: {reason}",
            file.display()
        ),
    )
}

fn read_pem(registry: &str, what: &str, file: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(file).map_err(|e| unusable(registry, what, file, &e.to_string()))
}

/// The files of `dir` named `*.<extension>`, sorted; none when it is absent.
fn files_ending(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_come_from_the_settings_then_the_certs_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("r:5000");
        std::fs::create_dir(&host).unwrap();
        for name in ["ca.crt", "client.cert", "client.key", "README"] {
            std::fs::write(host.join(name), "x").unwrap();
        }
        let found = TlsFiles::find(
            "r:5000",
            &RegistryConfig::default(),
            std::slice::from_ref(&host),
        )
        .unwrap();
        assert_eq!(found.ca_files, [host.join("ca.crt")]);
        assert_eq!(
            found.identity,
            Some((host.join("client.cert"), host.join("client.key")))
        );
        let explicit = RegistryConfig {
            ca_file: Some("/ca.pem".into()),
            client_cert: Some("/c.pem".into()),
            client_key: Some("/k.pem".into()),
            ..RegistryConfig::default()
        };
        let found = TlsFiles::find("r:5000", &explicit, std::slice::from_ref(&host)).unwrap();
        assert_eq!(found.ca_files[0], PathBuf::from("/ca.pem"));
        assert_eq!(found.identity, Some(("/c.pem".into(), "/k.pem".into())));

        std::fs::remove_file(host.join("client.key")).unwrap();
        let e = TlsFiles::find("r:5000", &RegistryConfig::default(), &[host]).unwrap_err();
        assert!(e.message.contains("client.key"), "{}", e.message);
        let half = RegistryConfig {
            client_cert: Some("/c.pem".into()),
            ..RegistryConfig::default()
        };
        assert!(TlsFiles::find("r", &half, &[]).is_err());
    }
}
