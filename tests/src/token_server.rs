//! A tiny bearer-token server for registries configured with `auth: token`
//! (Distribution's token authentication), on a free loopback port.
//!
//! `GET /token?service=…&scope=repository:NAME:ACTIONS` with HTTP Basic
//! credentials matching its one user answers `200 {"token": JWT,
//! "expires_in": 300, "issued_at": …}`; the JWT (RS256, signed with
//! `openssl dgst -sha256 -sign`) grants every scope asked for and carries the
//! signing certificate in its `x5c` header, which the registry verifies
//! against its `rootcertbundle`. Missing or wrong credentials get 401.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::certs::TestPki;
use crate::registry::require_tool;

/// The `service` the tokens are for (the registry's `auth.token.service`).
pub const SERVICE: &str = "distd-test-registry";
/// The tokens' issuer (the registry's `auth.token.issuer`).
pub const ISSUER: &str = "distd-test-token-server";
/// How long a token lives, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// What the server shares with its connection threads.
struct State {
    /// `Basic <base64 user:password>`, the one accepted Authorization value.
    expected_auth: String,
    signing_key: PathBuf,
    /// Base64 (standard) DER of the signing certificate.
    x5c: String,
    requests: AtomicUsize,
    refused: AtomicUsize,
    /// Every request line with its outcome, for messages.
    log: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A running token server; dropping it stops it.
pub struct TokenServer {
    port: u16,
    user: String,
    password: String,
    signing_cert: PathBuf,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a server that signs with `pki`'s signing key and accepts
    /// `user`:`password`.
    pub fn start(pki: &TestPki, user: &str, password: &str) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let port = listener.local_addr().expect("a bound address").port();
        let state = Arc::new(State {
            expected_auth: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            signing_key: pki.signing_key.clone(),
            x5c: base64(&pki.signing_cert_der()),
            requests: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let shared = Arc::clone(&state);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(&state, stream));
            }
        });
        TokenServer {
            port,
            user: user.to_owned(),
            password: password.to_owned(),
            signing_cert: pki.signing_cert.clone(),
            state,
            acceptor: Some(acceptor),
        }
    }

    /// The token endpoint, the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate that verifies the tokens (`auth.token.rootcertbundle`).
    pub fn signing_cert(&self) -> &Path {
        &self.signing_cert
    }

    /// The accepted username.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The accepted password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// How many token requests arrived so far (granted or refused).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many token requests were refused (401) so far.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Every request so far, one line each: `<status> <request line>`.
    pub fn log(&self) -> Vec<String> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so that it sees the flag.
        TcpStream::connect(("127.0.0.1", self.port)).ok();
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().ok();
        }
    }
}

/// Answers one connection (one request; the answer closes it).
fn serve(state: &State, stream: TcpStream) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone a TCP stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let request_line = request_line.trim_end().to_owned();
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    // Drain a body (none is expected) so that closing does not reset.
    std::io::copy(
        &mut reader.by_ref().take(content_length as u64),
        &mut std::io::sink(),
    )
    .ok();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = answer(state, &request_line, authorization.as_deref());
    if status == 401 {
        state.refused.fetch_add(1, Ordering::SeqCst);
    }
    state
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{status} {request_line}"));
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"distd-test-token\"\r\n");
    }
    head.push_str("\r\n");
    let mut stream = reader.into_inner();
    stream.write_all(head.as_bytes()).ok();
    stream.write_all(body.as_bytes()).ok();
    stream.flush().ok();
    stream.shutdown(Shutdown::Write).ok();
}

/// The status and JSON body for one request.
fn answer(state: &State, request_line: &str, authorization: Option<&str>) -> (u16, String) {
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return (404, r#"{"error":"not found"}"#.to_owned());
    }
    if method != "GET" {
        return (405, r#"{"error":"only GET"}"#.to_owned());
    }
    if authorization != Some(state.expected_auth.as_str()) {
        return (401, r#"{"error":"bad or missing credentials"}"#.to_owned());
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map_or(SERVICE, |(_, v)| v.as_str());
    let access: Vec<serde_json::Value> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|scope| {
            // type:name:actions; the name may hold ':' (a port), actions not.
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(json!({ "type": kind, "name": name, "actions": actions }))
        })
        .collect();
    let token = sign_token(state, service, &access);
    let body = json!({
        "token": token,
        "expires_in": TOKEN_LIFETIME_SECS,
        "issued_at": rfc3339_now(),
    });
    (200, body.to_string())
}

/// A JWT for `service` granting `access`, signed RS256.
fn sign_token(state: &State, service: &str, access: &[serde_json::Value]) -> String {
    let now = unix_now();
    let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [state.x5c] });
    let claims = json!({
        "iss": ISSUER,
        "sub": "distd-test-user",
        "aud": service,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": format!("{now}-{}", state.requests.load(Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new(require_tool("openssl", "openssl"))
        .args(["dgst", "-sha256", "-sign"])
        .arg(&state.signing_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("openssl's stdin")
        .write_all(signing_input.as_bytes())
        .expect("feed openssl dgst");
    let out = child.wait_with_output().expect("wait for openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", base64url(&out.stdout))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = unix_now();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Decodes `%XX` escapes and `+` (a space) of a query component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), e.g. for a Docker
/// `config.json` `auth` entry.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// URL-safe base64 without padding (RFC 4648 §5), as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn query_components_are_decoded() {
        assert_eq!(
            percent_decode("repository%3Atest%2Fapp%3Apull%2Cpush"),
            "repository:test/app:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    #[test]
    fn dates_are_civil() {
        let date = rfc3339_now();
        assert_eq!(date.len(), 20, "{date}");
        assert!(date.starts_with("20"), "{date}");
    }
}
