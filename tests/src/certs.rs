//! A throwaway PKI for TLS and token-auth tests, made with the `openssl`
//! command line: a CA, a server certificate for `127.0.0.1`/`localhost` and
//! a client certificate signed by it, and a self-signed RSA pair that signs
//! registry tokens.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::registry::require_tool;

/// The `openssl` configuration: the request defaults and one extension
/// section per kind of certificate.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = distd test
[ca_ext]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[signing_ext]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
";

/// Files of a test PKI, all PEM. TLS keys are EC P-256 (fast to make); the
/// token-signing key is RSA 2048 (tokens are RS256).
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The CA's self-signed certificate (`CA:true`).
    pub ca_cert: PathBuf,
    /// The CA's private key.
    pub ca_key: PathBuf,
    /// Server certificate for `IP:127.0.0.1` and `DNS:localhost`, signed by the CA.
    pub server_cert: PathBuf,
    /// The server certificate's key.
    pub server_key: PathBuf,
    /// Client certificate (`extendedKeyUsage = clientAuth`), signed by the CA.
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
    /// Self-signed certificate of the token-signing key (a registry's
    /// `rootcertbundle`).
    pub signing_cert: PathBuf,
    /// RSA private key that signs tokens.
    pub signing_key: PathBuf,
}

impl TestPki {
    /// Makes a fresh PKI in `dir` (created if needed).
    pub fn new(dir: &Path) -> TestPki {
        fs::create_dir_all(dir).expect("create the PKI directory");
        let file = |name: &str| dir.join(name);
        let pki = TestPki {
            dir: dir.to_owned(),
            ca_cert: file("ca.crt"),
            ca_key: file("ca.key"),
            server_cert: file("server.crt"),
            server_key: file("server.key"),
            client_cert: file("client.cert"),
            client_key: file("client.key"),
            signing_cert: file("signing.crt"),
            signing_key: file("signing.key"),
        };
        let config = file("openssl.cnf");
        fs::write(&config, OPENSSL_CONFIG).expect("write the openssl config");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

        let mut ca = pki.openssl(&["req", "-x509", "-extensions", "ca_ext", "-nodes"]);
        ca.args(ec)
            .arg("-config")
            .arg(&config)
            .args(["-days", "3650", "-subj", "/CN=distd test CA"])
            .arg("-keyout")
            .arg(&pki.ca_key)
            .arg("-out")
            .arg(&pki.ca_cert);
        run(ca);
        pki.issue(
            &config,
            "server",
            "/CN=127.0.0.1",
            &pki.server_key,
            &pki.server_cert,
        );
        pki.issue(
            &config,
            "client",
            "/CN=distd test client",
            &pki.client_key,
            &pki.client_cert,
        );
        let mut signing = pki.openssl(&["req", "-x509", "-extensions", "signing_ext", "-nodes"]);
        signing
            .args(["-newkey", "rsa:2048", "-days", "3650"])
            .args(["-subj", "/CN=distd test token signer"])
            .arg("-config")
            .arg(&config)
            .arg("-keyout")
            .arg(&pki.signing_key)
            .arg("-out")
            .arg(&pki.signing_cert);
        run(signing);
        pki
    }

    /// The DER bytes of the token-signing certificate (what a JWT's `x5c`
    /// header carries, base64).
    pub fn signing_cert_der(&self) -> Vec<u8> {
        let mut command = self.openssl(&["x509", "-outform", "DER", "-in"]);
        command.arg(&self.signing_cert);
        run(command)
    }

    /// Writes a Docker-style certs directory at `dir`: `ca.crt`, plus
    /// `client.cert` and `client.key` when `with_client` (what skopeo's
    /// `--dest-cert-dir` and distd's `certs.d/<host>/` read).
    pub fn write_certs_dir(&self, dir: &Path, with_client: bool) {
        fs::create_dir_all(dir).expect("create a certs directory");
        fs::copy(&self.ca_cert, dir.join("ca.crt")).expect("copy ca.crt");
        if with_client {
            fs::copy(&self.client_cert, dir.join("client.cert")).expect("copy client.cert");
            fs::copy(&self.client_key, dir.join("client.key")).expect("copy client.key");
        }
    }

    /// A key and a certificate for `subject` with the `<kind>_ext`
    /// extensions, signed by the CA.
    fn issue(&self, config: &Path, kind: &str, subject: &str, key: &Path, cert: &Path) {
        let csr = self.dir.join(format!("{kind}.csr"));
        let mut request = self.openssl(&["req", "-new", "-nodes"]);
        request
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", subject])
            .arg("-config")
            .arg(config)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&csr);
        run(request);
        let mut sign = self.openssl(&["x509", "-req", "-days", "3650", "-set_serial"]);
        sign.arg(format!("0x{}", serial(kind)))
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca_cert)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .arg("-extfile")
            .arg(config)
            .args(["-extensions", &format!("{kind}_ext")])
            .arg("-out")
            .arg(cert);
        run(sign);
    }

    fn openssl(&self, args: &[&str]) -> Command {
        let mut command = Command::new(require_tool("openssl", "openssl"));
        command.args(args).current_dir(&self.dir);
        command
    }
}

/// A serial number unique enough for certificates of one test run.
fn serial(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{:x}{:02x}", nanos, kind.len())
}

/// Runs an `openssl` command; panics with its stderr when it fails.
/// Returns its stdout.
fn run(mut command: Command) -> Vec<u8> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
