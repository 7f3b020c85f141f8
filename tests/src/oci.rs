//! Building OCI images and image layouts whose every digest the test knows.

use std::fs;
use std::path::Path;

use distd_sdk::media;
use serde_json::json;

use crate::data::{Rng, sha256};

/// One piece of content with its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of these bytes.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256(&bytes),
            bytes,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The OCI descriptor JSON.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size(),
        })
    }

    /// The hex part of the digest (the file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest
            .strip_prefix("sha256:")
            .expect("a sha256 digest")
    }
}

/// An uncompressed tar layer holding one file of about `size` random bytes.
pub fn layer(seed: u64, size: usize) -> Blob {
    let mut content = vec![0u8; size];
    Rng::new(seed).fill(&mut content);
    let mut builder = tar::Builder::new(Vec::with_capacity(size + 2048));
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, format!("data-{seed}.bin"), content.as_slice())
        .expect("build a layer tar");
    Blob::new(
        media::OCI_LAYER_TAR,
        builder.into_inner().expect("finish a layer tar"),
    )
}

/// A single-platform OCI image: manifest → config + layers.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// An image with fresh random layers of the given sizes.
    pub fn random(seed: u64, layer_sizes: &[usize]) -> Image {
        let layers = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| layer(seed.wrapping_mul(1000).wrapping_add(i as u64), size))
            .collect();
        Image::from_layers(seed, layers)
    }

    /// An image over these layers (uncompressed tars: diff ids are their
    /// digests). `seed` makes the config, hence the manifest, unique.
    pub fn from_layers(seed: u64, layers: Vec<Blob>) -> Image {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [format!("SEED={seed}")] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": layers.iter().map(|_| json!({"created_by": "distd-tests"})).collect::<Vec<_>>(),
        });
        let config = Blob::new(
            media::OCI_CONFIG,
            serde_json::to_vec(&config).expect("serialize a config"),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            media::OCI_MANIFEST,
            serde_json::to_vec(&manifest).expect("serialize a manifest"),
        );
        Image {
            manifest,
            config,
            layers,
        }
    }

    /// Every blob: manifest, config, layers.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut out = vec![&self.manifest, &self.config];
        out.extend(self.layers.iter());
        out
    }

    /// Every blob's digest, sorted.
    pub fn digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self.blobs().iter().map(|b| b.digest.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Sum of every blob's size.
    pub fn total_bytes(&self) -> u64 {
        self.blobs().iter().map(|b| b.size()).sum()
    }

    /// Writes an OCI image layout at `dir` (created) whose index.json names
    /// this image's manifest, tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).expect("create an OCI layout");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        for blob in self.blobs() {
            fs::write(blobs.join(blob.hex()), &blob.bytes).expect("write a layout blob");
        }
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [descriptor],
        });
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec_pretty(&index).expect("serialize index.json"),
        )
        .expect("write index.json");
    }
}
