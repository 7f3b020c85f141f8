//! `distctl import PATH [--name NAME]`: an OCI image layout (a directory, or
//! a tar such as Docker ≥25's `docker save`) or a legacy docker-archive.
//!
//! Every byte goes through `Content.Write` — the daemon may run as another
//! user and is never handed a path. The import holds a lease from its first
//! blob until its image records exist, uploads children before parents, and
//! writes the image records last.
//!
//! Naming: `--name`, else each index entry's `io.containerd.image.name`
//! annotation, else its `org.opencontainers.image.ref.name` used as written
//! (the OCI spec allows a bare tag such as "1.0" there; it becomes the image
//! name as is — rename it with `distctl images tag`). A legacy archive's
//! images are named by all their `RepoTags`.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use distd_sdk::client::{Seekable, WriteOptions, WriteOutcome};
use distd_sdk::media::{self, ContentClass, MAX_MANIFEST_BYTES};
use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Algorithm, Client, Digest, ErrorKind};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::cli::ImportArgs;
use crate::explain::Explain;
use crate::layout::{self, Descriptor, blob_path, check_oci_layout, name_entries, parse_index};
use crate::output::{self, Output, Progress};
use crate::source::Source;

mod legacy;

/// How long the import's lease lives if distctl dies before ending it.
const IMPORT_LEASE: Duration = Duration::from_secs(3600);

/// Runs `import`.
pub async fn run(client: &Client, out: Output, args: ImportArgs) -> anyhow::Result<()> {
    let path = &args.path;
    let meta = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let source = if meta.is_dir() {
        Source::Dir(path.clone())
    } else {
        if is_gzip(path).await? {
            bail!(
                "{} is gzip-compressed: decompress it first (gunzip -k {0}) and import the tar",
                path.display()
            );
        }
        Source::tar(path).await?
    };
    let oci = source.exists("oci-layout").await && source.exists("index.json").await;
    if !oci && (meta.is_dir() || !source.exists("manifest.json").await) {
        bail!(
            "{} is neither an OCI image layout (oci-layout + index.json) nor a docker-archive (manifest.json)",
            path.display()
        );
    }
    let labels = HashMap::from([("distctl.import".to_owned(), path.display().to_string())]);
    let lease = client
        .lease_create("", Some(IMPORT_LEASE), labels)
        .await
        .explain("creating the import's lease", &[])?;
    let mut up = Uploader {
        client,
        source: &source,
        lease: lease.id.clone(),
        archive_key: archive_key(path, &meta),
        progress: Progress::bytes("import", None),
        done: 0,
        uploaded: 0,
        present: 0,
    };
    let imported = if oci {
        import_oci(&mut up, args.name.as_deref()).await
    } else {
        legacy::import(&mut up, args.name.as_deref()).await
    };
    up.progress.finish();
    let records = match imported {
        Ok(targets) => create_images(client, targets).await,
        Err(err) => Err(err),
    };
    if let Err(err) = client.lease_delete(&lease.id).await {
        output::warn(&format!("could not end lease {}: {err}", lease.id));
    }
    let records = records?;
    let images: Vec<_> = records
        .iter()
        .map(|(name, d)| {
            json!({ "name": name, "digest": d.digest, "media_type": d.media_type, "size": d.size })
        })
        .collect();
    let doc = json!({
        "images": images,
        "blobs_uploaded": up.uploaded,
        "blobs_present": up.present,
        "bytes": up.done,
    });
    out.result(&doc, || {
        records
            .iter()
            .map(|(name, d)| format!("imported {name} → {}", d.digest))
            .collect()
    });
    Ok(())
}

async fn is_gzip(path: &Path) -> anyhow::Result<bool> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match file.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(n == 2 && head == [0x1f, 0x8b])
}

/// Uploads blobs under the import's lease, counting and showing progress.
struct Uploader<'a> {
    client: &'a Client,
    source: &'a Source,
    lease: String,
    archive_key: String,
    progress: Progress,
    done: u64,
    uploaded: usize,
    present: usize,
}

impl Uploader<'_> {
    /// Uploads the file `rel` of the source; returns its digest and size.
    async fn upload_file(
        &mut self,
        rel: &str,
        expected: Option<&Digest>,
        media_type: &str,
    ) -> anyhow::Result<(Digest, u64)> {
        let range = self.source.open(rel).await?;
        let size = range.len();
        let ingest_ref = match expected {
            Some(d) => format!("distctl-import-{}-{}", d.algorithm().name(), d.hex()),
            None => {
                let key = format!("{}\0{rel}", self.archive_key);
                let d = Digest::of_bytes(Algorithm::Sha256, key.as_bytes());
                format!("distctl-import-{}", &d.hex()[..32])
            }
        };
        let what = format!("{rel} of {}", self.source.describe());
        self.upload(range, ingest_ref, expected, size, media_type, &what)
            .await
    }

    /// Uploads a small document built in memory.
    async fn upload_bytes(&mut self, bytes: Vec<u8>, media_type: &str) -> anyhow::Result<Digest> {
        let digest = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let ingest_ref = format!("distctl-import-sha256-{}", digest.hex());
        let size = bytes.len() as u64;
        let source = Seekable::new(std::io::Cursor::new(bytes));
        let what = format!("the manifest built for {}", self.source.describe());
        self.upload(source, ingest_ref, Some(&digest), size, media_type, &what)
            .await?;
        Ok(digest)
    }

    async fn upload<S: distd_sdk::client::BlobSource>(
        &mut self,
        source: S,
        ingest_ref: String,
        expected: Option<&Digest>,
        size: u64,
        media_type: &str,
        what: &str,
    ) -> anyhow::Result<(Digest, u64)> {
        let opts = WriteOptions {
            ingest_ref,
            expected: expected.cloned(),
            total: Some(size),
            media_type: media_type.to_owned(),
            lease_id: self.lease.clone(),
        };
        let base = self.done;
        let progress = &self.progress;
        let mismatch = format!("{what} does not match the digest or size its descriptor gives");
        let outcome = self
            .client
            .write_blob(&opts, source, |n| progress.set(base + n))
            .await
            .explain(
                &format!("uploading {what}"),
                &[
                    (ErrorKind::DataLoss, &mismatch),
                    (
                        ErrorKind::InvalidArgument,
                        "the archive holds a document distd cannot parse",
                    ),
                ],
            )?;
        self.done = base + size;
        self.progress.set(self.done);
        let digest = match outcome {
            WriteOutcome::Committed { digest, .. } => {
                self.uploaded += 1;
                digest
            }
            WriteOutcome::AlreadyExists(digest) => {
                // Present, but perhaps unreferenced: hold it until the image
                // record exists, so a concurrent collection cannot take it.
                self.client
                    .lease_add_content(&self.lease, &digest)
                    .await
                    .explain(&format!("protecting {digest} with the import's lease"), &[])?;
                self.present += 1;
                digest
            }
        };
        Ok((digest, size))
    }
}

/// `archive path \0 size \0 mtime`: identifies an archive so an interrupted
/// import of the same file resumes its ingests.
fn archive_key(path: &Path, meta: &std::fs::Metadata) -> String {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}\0{}\0{mtime}",
        String::from_utf8_lossy(absolute.as_os_str().as_bytes()),
        meta.len()
    )
}

/// A blob to upload, found by walking the layout.
#[derive(Debug, Clone)]
struct Planned {
    digest: Digest,
    size: u64,
    media_type: String,
}

/// Walks the layout from `roots`, children before parents. Children of an
/// index that the layout lacks are skipped (an index may list platforms that
/// were not exported); anything else missing is an error.
async fn plan(source: &Source, roots: &[Descriptor]) -> anyhow::Result<(Vec<Planned>, usize)> {
    enum Frame {
        Enter(Planned, bool),
        Exit(Planned),
    }
    let mut stack = Vec::new();
    for root in roots.iter().rev() {
        let planned = Planned {
            digest: root.digest()?,
            size: root.size,
            media_type: root.media_type.clone(),
        };
        stack.push(Frame::Enter(planned, false));
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut skipped = 0;
    while let Some(frame) = stack.pop() {
        let (blob, optional) = match frame {
            Frame::Exit(blob) => {
                order.push(blob);
                continue;
            }
            Frame::Enter(blob, optional) => (blob, optional),
        };
        if seen.contains(&blob.digest) {
            continue;
        }
        let rel = blob_path(&blob.digest);
        if !source.exists(&rel).await {
            if optional {
                skipped += 1;
                continue;
            }
            bail!("{} lacks blob {} ({rel})", source.describe(), blob.digest);
        }
        seen.insert(blob.digest.clone());
        let class = media::classify(&blob.media_type);
        let children = if matches!(class, ContentClass::Manifest | ContentClass::Index) {
            let bytes = source.read_small(&rel, MAX_MANIFEST_BYTES).await?;
            let actual = Digest::of_bytes(blob.digest.algorithm(), &bytes);
            if actual != blob.digest || bytes.len() as u64 != blob.size {
                bail!(
                    "{rel} in {} does not match its descriptor (digest {actual}, {} bytes)",
                    source.describe(),
                    bytes.len()
                );
            }
            media::children(&blob.media_type, &bytes)
                .with_context(|| format!("reading {rel} in {}", source.describe()))?
        } else {
            Vec::new()
        };
        let optional_children = class == ContentClass::Index;
        stack.push(Frame::Exit(blob));
        for child in children.into_iter().rev() {
            let planned = Planned {
                digest: child.digest,
                size: child.size,
                media_type: child.media_type,
            };
            stack.push(Frame::Enter(planned, optional_children));
        }
    }
    Ok((order, skipped))
}

async fn import_oci(
    up: &mut Uploader<'_>,
    name: Option<&str>,
) -> anyhow::Result<Vec<(String, pb::Descriptor)>> {
    let source = up.source;
    let marker = source.read_small("oci-layout", 64 * 1024).await?;
    check_oci_layout(&marker)?;
    let index_bytes = source.read_small("index.json", MAX_MANIFEST_BYTES).await?;
    let index = parse_index(&index_bytes)?;
    if index.manifests.is_empty() {
        bail!("{}: index.json lists no image", source.describe());
    }
    let (mut named, skipped) = name_entries(&index, name);
    if named.is_empty() && name.is_none() {
        named = legacy_names(source, &index).await;
    }
    if named.is_empty() && name.is_none() {
        bail!(
            "{} names no image (no {} annotation in index.json): pass --name NAME",
            source.describe(),
            layout::REF_NAME
        );
    }
    if skipped > 0 && name.is_none() {
        output::warn(&format!(
            "{skipped} index.json entr(y/ies) without a name not imported; pass --name to import them all as one image"
        ));
    }
    let (blobs, absent) = plan(source, &index.manifests).await?;
    if absent > 0 {
        output::warn(&format!(
            "{absent} manifest(s) listed by the layout's indexes are not in it (other platforms?); importing what is present"
        ));
    }
    up.progress.set_total(blobs.iter().map(|b| b.size).sum());
    for blob in &blobs {
        up.upload_file(
            &blob_path(&blob.digest),
            Some(&blob.digest),
            &blob.media_type,
        )
        .await?;
    }
    if named.is_empty() {
        // --name with several entries: the name points at the layout's index
        // itself, uploaded as an image index.
        let mut index = index.clone();
        index.media_type = Some(media::OCI_INDEX.to_owned());
        let bytes = serde_json::to_vec(&index).context("encoding the index")?;
        let size = bytes.len() as i64;
        let digest = up.upload_bytes(bytes, media::OCI_INDEX).await?;
        let target = pb::Descriptor {
            media_type: media::OCI_INDEX.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: HashMap::new(),
        };
        let name = name.unwrap_or_default().to_owned();
        return Ok(vec![(name, target)]);
    }
    Ok(named
        .into_iter()
        .map(|(name, d)| (name, to_pb(d)))
        .collect())
}

/// A Docker ≥25 archive whose index.json names nothing: take the names from
/// its manifest.json when it describes the single index entry.
async fn legacy_names<'a>(
    source: &Source,
    index: &'a layout::Index,
) -> Vec<(String, &'a Descriptor)> {
    let [only] = index.manifests.as_slice() else {
        return Vec::new();
    };
    let Ok(bytes) = source.read_small("manifest.json", MAX_MANIFEST_BYTES).await else {
        return Vec::new();
    };
    match layout::parse_docker_manifest(&bytes).as_deref() {
        Ok([image]) => image
            .repo_tags
            .iter()
            .flatten()
            .map(|tag| (tag.clone(), only))
            .collect(),
        _ => Vec::new(),
    }
}

fn to_pb(d: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
    }
}

/// Records the images, last: every blob they need is in the store by now.
async fn create_images(
    client: &Client,
    targets: Vec<(String, pb::Descriptor)>,
) -> anyhow::Result<Vec<(String, pb::Descriptor)>> {
    let mut done = Vec::new();
    for (name, target) in targets {
        client.image_put(&name, target.clone()).await.explain(
            &format!("recording image {name:?}"),
            &[
                (
                    ErrorKind::InvalidArgument,
                    "give the image a valid name with --name, e.g. registry.example.com/app:1.0",
                ),
                (
                    ErrorKind::FailedPrecondition,
                    "its content is not in the store (collected meanwhile?); run the import again",
                ),
            ],
        )?;
        done.push((name, target));
    }
    Ok(done)
}
