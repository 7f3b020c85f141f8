//! `distctl export NAME PATH [--format oci|docker-archive]`.
//!
//! Both formats carry the image's blobs byte for byte (`blobs/<alg>/<hex>`)
//! and an `index.json` whose entry is the image's target, so digests survive
//! a round trip. A docker-archive is that same layout inside a tar, plus the
//! `manifest.json` that `docker load` reads — the format `docker save` writes
//! since Docker 25. Every blob is streamed from `Content.Read` and verified
//! against its digest while it is written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use distd_sdk::client::ReadOptions;
use distd_sdk::media::{self, ContentClass};
use distd_sdk::{Client, Digest, ErrorKind};
use serde_json::json;

use crate::cli::{ExportArgs, ExportFormat};
use crate::explain::{Explain, explain};
use crate::layout::{self, Descriptor, DockerImage, Platform, blob_path};
use crate::output::{self, Output, Progress};
use crate::tarwrite::TarWriter;

/// A blob of the exported image.
#[derive(Debug, Clone)]
struct Blob {
    digest: Digest,
    size: u64,
}

/// What an export writes: the target and every blob reachable from it that
/// the store holds.
struct Plan {
    name: String,
    target: Descriptor,
    blobs: Vec<Blob>,
    /// Manifests of the index children that are absent (other platforms).
    absent: usize,
}

/// Runs `export`.
pub async fn run(client: &Client, out: Output, args: ExportArgs) -> anyhow::Result<()> {
    let image = client.image_get(&args.name).await.explain(
        &format!("image {:?}", args.name),
        &[(
            ErrorKind::NotFound,
            "see `distctl images ls` for the images there are",
        )],
    )?;
    let Some(target) = image.target else {
        bail!("image {:?} has no target", args.name);
    };
    let target = Descriptor {
        media_type: target.media_type,
        digest: target.digest,
        size: u64::try_from(target.size).unwrap_or(0),
        annotations: target.annotations.into_iter().collect(),
        platform: None,
    };
    let plan = walk(client, args.name.clone(), target).await?;
    if plan.absent > 0 {
        output::warn(&format!(
            "{} manifest(s) listed by the image's index are not in the store (other platforms?); exporting what is present",
            plan.absent
        ));
    }
    let total: u64 = plan.blobs.iter().map(|b| b.size).sum();
    let progress = Progress::bytes("export", Some(total));
    match args.format {
        ExportFormat::Oci => export_dir(client, &plan, &args.path, &progress).await?,
        ExportFormat::DockerArchive => export_tar(client, &plan, &args.path, &progress).await?,
    }
    progress.finish();
    let format = match args.format {
        ExportFormat::Oci => "oci",
        ExportFormat::DockerArchive => "docker-archive",
    };
    let doc = json!({
        "name": plan.name,
        "path": args.path,
        "format": format,
        "target": { "mediaType": plan.target.media_type, "digest": plan.target.digest, "size": plan.target.size },
        "blobs": plan.blobs.len(),
        "bytes": total,
        "absent_manifests": plan.absent,
    });
    out.result(&doc, || {
        vec![format!(
            "exported {} ({}) to {}: {} blobs, {}",
            plan.name,
            plan.target.digest,
            args.path.display(),
            plan.blobs.len(),
            output::bytes(i64::try_from(total).unwrap_or(i64::MAX))
        )]
    });
    Ok(())
}

/// Finds every blob reachable from `target` through manifests and indexes.
/// An index's children may be absent (platforms never pulled); a manifest's
/// config and layers may not.
async fn walk(client: &Client, name: String, target: Descriptor) -> anyhow::Result<Plan> {
    let mut stack = vec![(
        target.digest()?,
        target.media_type.clone(),
        target.size,
        false,
    )];
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    let mut absent = 0;
    while let Some((digest, media_type, size, optional)) = stack.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let info = match client.content_info(&digest).await {
            Ok(info) => info,
            Err(err) if err.kind() == ErrorKind::NotFound && optional => {
                absent += 1;
                continue;
            }
            Err(err) => {
                return Err(explain(
                    err,
                    &format!("image {name:?} needs blob {digest}"),
                    &[(
                        ErrorKind::NotFound,
                        "it is not in the store: pull or import the image again",
                    )],
                ));
            }
        };
        let stored = u64::try_from(info.size).unwrap_or(0);
        if stored != size {
            bail!(
                "blob {digest} is {stored} bytes in the store but {size} bytes in its descriptor"
            );
        }
        let class = media::classify(&media_type);
        if matches!(class, ContentClass::Manifest | ContentClass::Index) {
            let bytes = client
                .read_manifest(&digest)
                .await
                .explain(&format!("reading manifest {digest}"), &[])?;
            let children = media::children(&media_type, &bytes)
                .with_context(|| format!("reading manifest {digest}"))?;
            for child in children {
                let optional = class == ContentClass::Index;
                stack.push((child.digest, child.media_type, child.size, optional));
            }
        }
        blobs.push(Blob { digest, size });
    }
    Ok(Plan {
        name,
        target,
        blobs,
        absent,
    })
}

/// Writes an OCI layout directory at `path` (created if needed; an existing
/// layout gains the image, replacing an entry of the same name).
async fn export_dir(
    client: &Client,
    plan: &Plan,
    path: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    let io = |what: &Path| format!("writing {}", what.display());
    let mut done = 0u64;
    for blob in &plan.blobs {
        let file = path.join(blob_path(&blob.digest));
        let dir = file.parent().unwrap_or(path);
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| io(dir))?;
        let partial = dir.join(format!(".{}.partial", blob.digest.hex()));
        let out = tokio::fs::File::create(&partial)
            .await
            .with_context(|| io(&partial))?;
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, out);
        let opts = ReadOptions {
            verify: true,
            ..ReadOptions::default()
        };
        let read = client
            .read_blob_with(&blob.digest, opts, &mut writer, |n| progress.set(done + n))
            .await;
        if let Err(err) = read {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(explain(
                err,
                &format!("exporting blob {}", blob.digest),
                &[],
            ));
        }
        writer
            .into_inner()
            .sync_all()
            .await
            .with_context(|| io(&partial))?;
        tokio::fs::rename(&partial, &file)
            .await
            .with_context(|| io(&file))?;
        done += blob.size;
    }
    write_atomic(&path.join("oci-layout"), layout::OCI_LAYOUT_FILE.as_bytes()).await?;
    let index_path = path.join("index.json");
    let index = match tokio::fs::read(&index_path).await {
        Ok(existing) => layout::merge_index(&existing, &plan.name, &plan.target)
            .with_context(|| format!("adding the image to {}", index_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            layout::export_index(&plan.name, &plan.target)
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", index_path.display())),
    };
    let bytes = serde_json::to_vec(&index).context("encoding index.json")?;
    write_atomic(&index_path, &bytes).await
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = partial_path(path);
    tokio::fs::write(&partial, bytes)
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes a Docker ≥25 `docker save` archive: an OCI layout plus
/// `manifest.json`, built next to `path` and renamed into place when whole.
async fn export_tar(
    client: &Client,
    plan: &Plan,
    path: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    let manifest_json = docker_manifest_json(client, plan).await?;
    let partial = partial_path(path);
    let file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let written = write_tar(client, plan, &manifest_json, file, progress).await;
    let file = match written {
        Ok(file) => file,
        Err(err) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(err);
        }
    };
    file.sync_all()
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

async fn write_tar(
    client: &Client,
    plan: &Plan,
    manifest_json: &[u8],
    file: tokio::fs::File,
    progress: &Progress,
) -> anyhow::Result<tokio::fs::File> {
    let mut tar = TarWriter::new(tokio::io::BufWriter::with_capacity(1 << 20, file));
    tar.bytes("oci-layout", layout::OCI_LAYOUT_FILE.as_bytes())
        .await?;
    tar.dir("blobs/").await?;
    let mut dirs = HashSet::new();
    let mut done = 0u64;
    for blob in &plan.blobs {
        let alg = blob.digest.algorithm().name();
        if dirs.insert(alg) {
            tar.dir(&format!("blobs/{alg}/")).await?;
        }
        tar.begin_file(&blob_path(&blob.digest), blob.size).await?;
        let opts = ReadOptions {
            verify: true,
            ..ReadOptions::default()
        };
        let written = client
            .read_blob_with(&blob.digest, opts, tar.data(), |n| progress.set(done + n))
            .await
            .explain(&format!("exporting blob {}", blob.digest), &[])?;
        tar.end_file(blob.size, written).await?;
        done += blob.size;
    }
    let index = layout::export_index(&plan.name, &plan.target);
    let index = serde_json::to_vec(&index).context("encoding index.json")?;
    tar.bytes("index.json", &index).await?;
    tar.bytes("manifest.json", manifest_json).await?;
    Ok(tar.finish().await?.into_inner())
}

/// Docker's `manifest.json` for the image: the single platform manifest
/// (the host's, when the target is an index).
async fn docker_manifest_json(client: &Client, plan: &Plan) -> anyhow::Result<Vec<u8>> {
    let target = plan.target.digest()?;
    let manifest = match media::classify(&plan.target.media_type) {
        ContentClass::Manifest => target,
        ContentClass::Index => {
            let present: HashSet<&Digest> = plan.blobs.iter().map(|b| &b.digest).collect();
            let bytes = client
                .read_manifest(&target)
                .await
                .explain(&format!("reading index {target}"), &[])?;
            pick_platform(&bytes, &present, &Platform::host())
                .with_context(|| format!("image {:?} cannot be a docker-archive", plan.name))?
        }
        _ => bail!(
            "image {:?} targets {}, not a manifest or index: export it with --format oci",
            plan.name,
            plan.target.media_type
        ),
    };
    let bytes = client
        .read_manifest(&manifest)
        .await
        .explain(&format!("reading manifest {manifest}"), &[])?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
    let children = media::children(&media_type, &bytes)
        .with_context(|| format!("reading manifest {manifest}"))?;
    let Some((config, layers)) = children.split_first() else {
        bail!("manifest {manifest} has no config");
    };
    let image = DockerImage {
        config: blob_path(&config.digest),
        repo_tags: Some(vec![plan.name.clone()]),
        layers: layers.iter().map(|l| blob_path(&l.digest)).collect(),
    };
    serde_json::to_vec(&[image]).context("encoding manifest.json")
}

/// The manifest of `index` for `host` among the `present` blobs.
fn pick_platform(
    index: &[u8],
    present: &HashSet<&Digest>,
    host: &Platform,
) -> anyhow::Result<Digest> {
    let index = layout::parse_index(index)?;
    let mut available = Vec::new();
    for entry in &index.manifests {
        let digest = entry.digest()?;
        if media::classify(&entry.media_type) != ContentClass::Manifest
            || !present.contains(&digest)
        {
            continue;
        }
        match &entry.platform {
            Some(p) if p.runs_on(host) => return Ok(digest),
            Some(p) => available.push(p.to_string()),
            None => available.push("unknown".to_owned()),
        }
    }
    if available.is_empty() {
        bail!("the store holds none of its index's manifests");
    }
    bail!(
        "its index has no manifest for this host's platform {host} in the store (present: {})",
        available.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const M1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const M2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index() -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{m}","digest":"{M1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"{M2}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            m = media::OCI_MANIFEST
        )
        .into_bytes()
    }

    fn platform(arch: &str) -> Platform {
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        }
    }

    #[test]
    fn picks_the_host_platform_among_present_manifests() {
        let (m1, m2) = (Digest::parse(M1).unwrap(), Digest::parse(M2).unwrap());
        let both: HashSet<&Digest> = [&m1, &m2].into_iter().collect();
        assert_eq!(
            pick_platform(&index(), &both, &platform("arm64")).unwrap(),
            m2
        );
        assert_eq!(
            pick_platform(&index(), &both, &platform("amd64")).unwrap(),
            m1
        );
        let only_arm: HashSet<&Digest> = [&m2].into_iter().collect();
        let err = pick_platform(&index(), &only_arm, &platform("amd64")).unwrap_err();
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
        assert!(pick_platform(&index(), &HashSet::new(), &platform("amd64")).is_err());
    }

    #[test]
    fn partial_files_sit_beside_their_target() {
        assert_eq!(
            partial_path(Path::new("/x/img.tar")),
            PathBuf::from("/x/img.tar.partial")
        );
    }

    #[test]
    fn unused_annotations_survive() {
        let d = Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: M1.into(),
            size: 1,
            annotations: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
            platform: None,
        };
        let idx = layout::export_index("n:1", &d);
        assert_eq!(idx.manifests[0].annotations.len(), 3);
    }
}
