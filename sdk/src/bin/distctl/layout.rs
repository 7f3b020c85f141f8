//! The on-disk formats distctl imports and exports: OCI image layouts
//! (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) and Docker's
//! `manifest.json`, and the rules that keep paths read from them inside the
//! layout.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use distd_sdk::Digest;
use serde::{Deserialize, Serialize};

/// `org.opencontainers.image.ref.name`: the name of an index entry (often
/// only a tag, per the OCI spec).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `io.containerd.image.name`: the full image name containerd and Docker ≥25
/// write next to the ref name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The content of the `oci-layout` file distctl writes.
pub const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A descriptor as the OCI image spec spells it in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest of the content (validated with [`Descriptor::digest`]).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The validated digest.
    pub fn digest(&self) -> anyhow::Result<Digest> {
        Digest::parse(&self.digest).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The image name this index entry carries: containerd's full name when
    /// present, else the OCI ref name as written (which may be only a tag).
    pub fn image_name(&self) -> Option<&str> {
        [CONTAINERD_NAME, REF_NAME]
            .iter()
            .filter_map(|k| self.annotations.get(*k))
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
    }
}

/// A platform, as in an image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (GOARCH spelling: amd64, arm64…).
    pub architecture: String,
    /// Operating system (GOOS spelling).
    pub os: String,
    /// CPU variant (v7, v8…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform distctl runs on, in GOOS/GOARCH spelling.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: std::env::consts::OS.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry for `self` runs on `host` (the variant is only
    /// compared when both name one).
    pub fn runs_on(&self, host: &Platform) -> bool {
        self.os == host.os
            && self.architecture == host.architecture
            && match (&self.variant, &host.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (`index.json` of a layout, or an index blob).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The index's media type (optional in `index.json`).
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// Parses an index and checks that every entry has a valid digest and a
/// media type.
pub fn parse_index(bytes: &[u8]) -> anyhow::Result<Index> {
    let index: Index = serde_json::from_slice(bytes).context("index.json is not an OCI index")?;
    if index.schema_version != 2 {
        bail!(
            "index.json has schemaVersion {}, not 2",
            index.schema_version
        );
    }
    for entry in &index.manifests {
        entry.digest().context("index.json names a bad digest")?;
        if entry.media_type.is_empty() {
            bail!("index.json entry {} has no mediaType", entry.digest);
        }
    }
    Ok(index)
}

/// Checks the `oci-layout` file.
pub fn check_oci_layout(bytes: &[u8]) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let layout: Layout =
        serde_json::from_slice(bytes).context("oci-layout is not an OCI layout marker")?;
    if !layout.version.starts_with("1.") {
        bail!(
            "oci-layout has version {}, distctl reads 1.x",
            layout.version
        );
    }
    Ok(())
}

/// Where a blob lives inside a layout: `blobs/<alg>/<hex>`. Safe by
/// construction: a [`Digest`] is only ever lower-case hex.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// One image of a Docker `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerImage {
    /// Path of the config inside the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// Names of the image.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layers inside the archive, base first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// Parses a Docker `manifest.json` and checks every path in it.
pub fn parse_docker_manifest(bytes: &[u8]) -> anyhow::Result<Vec<DockerImage>> {
    let images: Vec<DockerImage> =
        serde_json::from_slice(bytes).context("manifest.json is not a docker-archive manifest")?;
    if images.is_empty() {
        bail!("manifest.json lists no image");
    }
    for image in &images {
        for path in std::iter::once(&image.config).chain(&image.layers) {
            safe_rel_path(path).context("manifest.json names an unsafe path")?;
        }
    }
    Ok(images)
}

/// Normalises a path read from an archive or manifest into `a/b/c` form.
/// Refuses what could leave the archive's root: absolute paths and `..`
/// components; refuses empty paths and NUL bytes.
pub fn safe_rel_path(path: &str) -> anyhow::Result<String> {
    if path.starts_with('/') {
        bail!("{path:?} is an absolute path");
    }
    if path.contains('\0') || path.contains('\\') {
        bail!("{path:?} contains a NUL byte or a backslash");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("{path:?} climbs out of its directory"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        bail!("{path:?} names no file");
    }
    Ok(parts.join("/"))
}

/// Resolves a link target found in a tar entry at `entry` (a normalised
/// path) against the entry's directory; `..` may climb as long as it stays
/// inside the archive. `None` when the target leaves the archive.
pub fn resolve_link(entry: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = entry.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The `index.json` distctl writes for one image: `target` named `name`.
pub fn export_index(name: &str, target: &Descriptor) -> Index {
    let mut entry = target.clone();
    entry
        .annotations
        .insert(REF_NAME.to_owned(), name.to_owned());
    entry
        .annotations
        .insert(CONTAINERD_NAME.to_owned(), name.to_owned());
    Index {
        schema_version: 2,
        media_type: Some(distd_sdk::media::OCI_INDEX.to_owned()),
        manifests: vec![entry],
    }
}

/// Adds `target` named `name` to an existing `index.json`, replacing an
/// entry of the same name.
pub fn merge_index(existing: &[u8], name: &str, target: &Descriptor) -> anyhow::Result<Index> {
    let mut index = parse_index(existing)?;
    index
        .manifests
        .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(name));
    index.manifests.extend(export_index(name, target).manifests);
    Ok(index)
}

/// Picks image names for the entries of an imported index: `--name` names
/// the single entry; otherwise each entry's own name. Returns the entries
/// that get a name, and the count of entries skipped for lack of one.
pub fn name_entries<'a>(
    index: &'a Index,
    name: Option<&str>,
) -> (Vec<(String, &'a Descriptor)>, usize) {
    if let Some(name) = name {
        return match index.manifests.as_slice() {
            [only] => (vec![(name.to_owned(), only)], 0),
            _ => (Vec::new(), index.manifests.len()),
        };
    }
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut named = Vec::new();
    let mut skipped = 0;
    for entry in &index.manifests {
        match entry.image_name() {
            Some(n) if seen.insert(n.to_owned(), ()).is_none() => named.push((n.to_owned(), entry)),
            Some(_) => {}
            None => skipped += 1,
        }
    }
    (named, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index(entries: &str) -> Vec<u8> {
        format!(r#"{{"schemaVersion":2,"manifests":[{entries}]}}"#).into_bytes()
    }

    fn entry(digest: &str, annotations: &str) -> String {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":7,"annotations":{{{annotations}}}}}"#
        )
    }

    #[test]
    fn reads_an_index_and_its_names() {
        let bytes = index(&format!(
            "{},{}",
            entry(D1, r#""org.opencontainers.image.ref.name":"1.0""#),
            entry(
                D2,
                r#""org.opencontainers.image.ref.name":"latest","io.containerd.image.name":"docker.io/library/alpine:latest""#
            )
        ));
        let idx = parse_index(&bytes).unwrap();
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(idx.manifests[0].image_name(), Some("1.0"));
        assert_eq!(
            idx.manifests[1].image_name(),
            Some("docker.io/library/alpine:latest")
        );
        let (named, skipped) = name_entries(&idx, None);
        assert_eq!(named.len(), 2);
        assert_eq!(skipped, 0);
        let (named, skipped) = name_entries(&idx, Some("x:1"));
        assert!(named.is_empty());
        assert_eq!(skipped, 2);
    }

    #[test]
    fn a_single_entry_takes_the_name_given() {
        let idx = parse_index(&index(&entry(D1, ""))).unwrap();
        let (named, _) = name_entries(&idx, None);
        assert!(named.is_empty());
        let (named, _) = name_entries(&idx, Some("app:1"));
        assert_eq!(named[0].0, "app:1");
    }

    #[test]
    fn refuses_bad_indexes() {
        assert!(parse_index(b"{}").is_err());
        assert!(parse_index(&index(&entry("sha256:../../etc/passwd", ""))).is_err());
        let no_media_type = format!(r#"{{"digest":"{D1}","size":1}}"#);
        assert!(parse_index(&index(&no_media_type)).is_err());
        assert!(check_oci_layout(br#"{"imageLayoutVersion":"1.0.0"}"#).is_ok());
        assert!(check_oci_layout(br#"{"imageLayoutVersion":"2.0.0"}"#).is_err());
    }

    #[test]
    fn export_index_round_trips_through_the_importer() {
        let target = Descriptor {
            media_type: distd_sdk::media::OCI_MANIFEST.into(),
            digest: D1.into(),
            size: 7,
            annotations: BTreeMap::new(),
            platform: None,
        };
        let bytes = serde_json::to_vec(&export_index("reg.example/app:1", &target)).unwrap();
        let idx = parse_index(&bytes).unwrap();
        let (named, _) = name_entries(&idx, None);
        assert_eq!(named[0].0, "reg.example/app:1");
        assert_eq!(named[0].1.digest, D1);
        let merged = merge_index(&bytes, "reg.example/app:2", &target).unwrap();
        assert_eq!(merged.manifests.len(), 2);
        let replaced = merge_index(&bytes, "reg.example/app:1", &target).unwrap();
        assert_eq!(replaced.manifests.len(), 1);
    }

    #[test]
    fn parses_a_docker_manifest() {
        let json = br#"[{"Config":"abc.json","RepoTags":["app:1"],"Layers":["l1/layer.tar","./l2/layer.tar"]}]"#;
        let images = parse_docker_manifest(json).unwrap();
        assert_eq!(images[0].config, "abc.json");
        assert_eq!(
            images[0].repo_tags.as_deref(),
            Some(&["app:1".to_owned()][..])
        );
        assert_eq!(images[0].layers.len(), 2);
        let untagged = br#"[{"Config":"abc.json","RepoTags":null,"Layers":[]}]"#;
        assert_eq!(parse_docker_manifest(untagged).unwrap()[0].repo_tags, None);
        for bad in [
            &br#"[{"Config":"../etc/passwd","Layers":[]}]"#[..],
            br#"[{"Config":"a.json","Layers":["/etc/shadow"]}]"#,
            br#"[]"#,
            br#"{"Config":"a"}"#,
        ] {
            assert!(parse_docker_manifest(bad).is_err());
        }
    }

    #[test]
    fn paths_from_archives_stay_inside() {
        assert_eq!(
            safe_rel_path("./blobs//sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "a/../../b",
            "..",
            "a/..",
            "a\\b",
            "a\0b",
        ] {
            assert!(safe_rel_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            resolve_link("a/b/layer.tar", "../c/layer.tar").as_deref(),
            Some("a/c/layer.tar")
        );
        assert_eq!(
            resolve_link("x/layer.tar", "../y/layer.tar").as_deref(),
            Some("y/layer.tar")
        );
        assert_eq!(resolve_link("x/layer.tar", "../../y"), None);
        assert_eq!(resolve_link("x/layer.tar", "/etc/passwd"), None);
    }

    #[test]
    fn blob_paths_come_from_digests() {
        let d = Digest::parse(D1).unwrap();
        assert_eq!(blob_path(&d), format!("blobs/sha256/{}", d.hex()));
    }

    #[test]
    fn platforms_match_the_host() {
        let host = Platform::host();
        let mut p = host.clone();
        p.variant = Some("v8".into());
        assert!(p.runs_on(&host));
        p.architecture = "s390x-not-this".into();
        assert!(!p.runs_on(&host));
    }
}
