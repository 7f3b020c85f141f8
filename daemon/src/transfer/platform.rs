//! Picking the manifests of an index that match a platform.

use std::fmt;

use distd_sdk::media::{self, ContentClass};

/// An OS/architecture pair, with an optional variant (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// GOARCH spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v7`; `None` matches any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host, in Go's spelling (what indexes use).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid =
            |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "platform {text:?} is not os/arch[/variant], e.g. linux/amd64"
            )),
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match (&self.variant, variant) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// One manifest of an index, with the platform it declares.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The manifest.
    pub child: media::ChildRef,
    /// Its platform as `os/arch[/variant]`, or `unknown`.
    pub platform: String,
    matches: bool,
}

impl Entry {
    /// Whether it matches the platform asked for.
    pub fn is_match(&self) -> bool {
        self.matches
    }
}

/// The image manifests an index lists, each marked whether it matches
/// `wanted` (`None` = every platform). Entries that are not image manifests
/// (attestations, nested indexes) are left out.
pub fn entries(index: &[u8], wanted: Option<&Platform>) -> Result<Vec<Entry>, String> {
    let parsed = oci_spec::image::ImageIndex::from_reader(index).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for manifest in parsed.manifests() {
        let media_type = manifest.media_type().to_string();
        if media::classify(&media_type) != ContentClass::Manifest {
            continue;
        }
        let child = media::ChildRef {
            digest: distd_sdk::Digest::parse(manifest.digest().as_ref())
                .map_err(|e| e.to_string())?,
            size: manifest.size(),
            media_type,
        };
        let (platform, matches) = match manifest.platform() {
            Some(p) => {
                let os = p.os().to_string();
                let arch = p.architecture().to_string();
                let variant = p.variant().clone();
                let text = match &variant {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                };
                let matches = wanted.is_none_or(|w| w.matches(&os, &arch, variant.as_deref()));
                (text, matches)
            }
            None => ("unknown".to_owned(), wanted.is_none()),
        };
        out.push(Entry {
            child,
            platform,
            matches,
        });
    }
    Ok(out)
}

/// The entries to pull: every match for all platforms, else the first match.
/// `Err` lists what the index offers.
pub fn select(entries: Vec<Entry>, all: bool) -> Result<Vec<Entry>, String> {
    let offered: Vec<String> = entries.iter().map(|e| e.platform.clone()).collect();
    let mut matching: Vec<Entry> = entries.into_iter().filter(|e| e.matches).collect();
    if !all {
        matching.truncate(1);
    }
    if matching.is_empty() {
        return Err(if offered.is_empty() {
            "the index lists no image manifests".to_owned()
        } else {
            format!("it offers {}", offered.join(", "))
        });
    }
    Ok(matching)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> String {
        let m = |hex: char, arch: &str, variant: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"sha256:{}","size":10,"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}"#,
                media::OCI_MANIFEST,
                hex.to_string().repeat(64)
            )
        };
        format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{}]}}"#,
            m('a', "amd64", ""),
            m('b', "arm", r#","variant":"v7""#),
            m('c', "arm64", r#","variant":"v8""#)
        )
    }

    #[test]
    fn picks_the_wanted_platform_or_lists_what_is_offered() {
        let wanted = Platform::parse("linux/arm/v7").unwrap();
        let picked = select(entries(index().as_bytes(), Some(&wanted)).unwrap(), false).unwrap();
        assert_eq!(picked.len(), 1);
        assert!(picked[0].child.digest.hex().starts_with('b'));
        let any_arm64 = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            select(
                entries(index().as_bytes(), Some(&any_arm64)).unwrap(),
                false
            )
            .unwrap()
            .len(),
            1
        );
        let missing = Platform::parse("windows/amd64").unwrap();
        let err = select(entries(index().as_bytes(), Some(&missing)).unwrap(), false).unwrap_err();
        assert!(
            err.contains("linux/amd64, linux/arm/v7, linux/arm64/v8"),
            "{err}"
        );
        assert_eq!(
            select(entries(index().as_bytes(), None).unwrap(), true)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/../x").is_err());
        assert_eq!(Platform::host().os, std::env::consts::OS);
    }
}
