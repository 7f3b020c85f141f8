//! Where a registry's TLS material comes from: its settings, then its
//! certs.d directories (Docker's layout).

use std::path::{Path, PathBuf};

use distd_sdk::error::ErrorKind;
use distd_sdk::transport::TransportError;

use crate::options::RegistryConfig;

/// The TLS material of one registry: from its settings, then its certs.d
/// directories.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The material of `registry` from `config` and its certs `dirs`.
    pub fn find(
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

/// The error for a TLS file that cannot be used.
pub fn unusable(registry: &str, what: &str, file: &Path, reason: &str) -> TransportError {
    TransportError::new(
        ErrorKind::InvalidArgument,
        format!(
            "{what} {} for registry {registry} is unusable: {reason}",
            file.display()
        ),
    )
}

/// Reads a PEM file of `registry`.
pub fn read_pem(registry: &str, what: &str, file: &Path) -> Result<Vec<u8>, TransportError> {
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
