//! The legacy docker-archive (`docker save` before Docker 25): a
//! `manifest.json` naming a config and layer tars by path. distctl uploads
//! them, then builds and uploads the Docker schema-2 manifest they lacked.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use distd_sdk::Digest;
use distd_sdk::media::{self, MAX_MANIFEST_BYTES};
use distd_sdk::proto::distd::v1 as pb;
use tokio::io::AsyncReadExt;

use super::Uploader;
use crate::layout::{self, Descriptor, DockerImage};
use crate::source::Source;

pub(super) async fn import(
    up: &mut Uploader<'_>,
    name: Option<&str>,
) -> anyhow::Result<Vec<(String, pb::Descriptor)>> {
    let source = up.source;
    let bytes = source
        .read_small("manifest.json", MAX_MANIFEST_BYTES)
        .await?;
    let images = layout::parse_docker_manifest(&bytes)?;
    if name.is_some() && images.len() > 1 {
        bail!(
            "{} holds {} images and --name names one; import it without --name (images are named by their RepoTags)",
            source.describe(),
            images.len()
        );
    }
    let mut total = 0;
    for image in &images {
        for rel in std::iter::once(&image.config).chain(&image.layers) {
            total += source.open(rel).await?.len();
        }
    }
    up.progress.set_total(total);
    let mut targets = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => image.repo_tags.clone().unwrap_or_default(),
        };
        if names.is_empty() {
            bail!(
                "image {} of {}'s manifest.json has no RepoTags: pass --name NAME",
                i + 1,
                source.describe()
            );
        }
        let target = import_docker_image(up, image).await?;
        targets.extend(names.into_iter().map(|n| (n, target.clone())));
    }
    Ok(targets)
}

/// Uploads one legacy image's config and layers, then a Docker schema-2
/// manifest for them; returns the manifest's descriptor.
async fn import_docker_image(
    up: &mut Uploader<'_>,
    image: &DockerImage,
) -> anyhow::Result<pb::Descriptor> {
    let (config, config_size) = up
        .upload_file(&image.config, None, media::DOCKER_CONFIG)
        .await?;
    let mut layers = Vec::new();
    for rel in &image.layers {
        let media_type = layer_media_type(up.source, rel).await?;
        let (digest, size) = up.upload_file(rel, None, media_type).await?;
        layers.push(Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        });
    }
    let manifest = docker_manifest(&config, config_size, layers);
    let bytes = serde_json::to_vec(&manifest).context("encoding the manifest")?;
    let size = bytes.len() as i64;
    let digest = up.upload_bytes(bytes, media::DOCKER_MANIFEST).await?;
    Ok(pb::Descriptor {
        media_type: media::DOCKER_MANIFEST.to_owned(),
        digest: digest.to_string(),
        size,
        annotations: HashMap::new(),
    })
}

/// A Docker image manifest, schema 2, fields in Docker's order.
#[derive(Debug, serde::Serialize)]
pub struct DockerManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The schema-2 manifest of a config and its layers.
pub fn docker_manifest(
    config: &Digest,
    config_size: u64,
    layers: Vec<Descriptor>,
) -> DockerManifest {
    DockerManifest {
        schema_version: 2,
        media_type: media::DOCKER_MANIFEST,
        config: Descriptor {
            media_type: media::DOCKER_CONFIG.to_owned(),
            digest: config.to_string(),
            size: config_size,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers,
    }
}

/// gzip (magic 1f 8b) or plain tar.
async fn layer_media_type(source: &Source, rel: &str) -> anyhow::Result<&'static str> {
    let mut head = [0u8; 2];
    let mut range = source.open(rel).await?;
    let n = range
        .read(&mut head)
        .await
        .with_context(|| format!("reading {rel}"))?;
    let n = if n == 1 {
        1 + range.read(&mut head[1..]).await.unwrap_or(0)
    } else {
        n
    };
    Ok(if n == 2 && head == [0x1f, 0x8b] {
        media::DOCKER_LAYER_GZIP
    } else {
        media::DOCKER_LAYER_TAR
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use distd_sdk::Algorithm;

    #[test]
    fn builds_a_docker_schema2_manifest_that_distd_can_parse() {
        let config = Digest::of_bytes(Algorithm::Sha256, b"{}");
        let layer = Descriptor {
            media_type: media::DOCKER_LAYER_TAR.into(),
            digest: Digest::of_bytes(Algorithm::Sha256, b"layer").to_string(),
            size: 5,
            annotations: BTreeMap::new(),
            platform: None,
        };
        let manifest = docker_manifest(&config, 2, vec![layer]);
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let children = media::children(media::DOCKER_MANIFEST, &bytes).unwrap();
        assert_eq!(children.len(), 2);
        assert_eq!(children[0].digest, config);
        assert_eq!(children[0].media_type, media::DOCKER_CONFIG);
        assert_eq!(children[1].size, 5);
        assert!(!String::from_utf8(bytes).unwrap().contains("annotations"));
    }
}
