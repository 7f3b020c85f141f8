//! `distctl content …`: blobs of the store.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use distd_sdk::client::{Unseekable, WriteOptions, WriteOutcome};
use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Algorithm, Client, Digest, ErrorKind, client::ReadOptions};
use serde_json::{Value, json};

use crate::cli::{ContentCmd, PutArgs};
use crate::explain::{Explain, parse_digest};
use crate::output::{self, Output, Progress};

/// Runs a `content` subcommand.
pub async fn run(client: &Client, out: Output, cmd: ContentCmd) -> anyhow::Result<()> {
    match cmd {
        ContentCmd::Ls { prefix, media_type } => {
            let prefix = prefix.unwrap_or_default();
            let media_type = media_type.unwrap_or_default();
            let infos = client
                .content_list(&prefix, &media_type)
                .await
                .explain("listing blobs", &[])?;
            let doc = Value::Array(infos.iter().map(info_json).collect());
            out.result(&doc, || {
                let rows: Vec<Vec<String>> = infos
                    .iter()
                    .map(|i| {
                        vec![
                            i.digest.clone(),
                            output::bytes(i.size),
                            output::time(i.created_at.as_ref()),
                            i.media_type.clone(),
                        ]
                    })
                    .collect();
                Output::table(&["DIGEST", "SIZE", "CREATED", "MEDIA TYPE"], &rows)
            });
        }
        ContentCmd::Info { digest } => {
            let digest = parse_digest(&digest)?;
            let info = client.content_info(&digest).await.explain(
                &format!("blob {digest}"),
                &[(
                    ErrorKind::NotFound,
                    "see `distctl content ls` for the blobs there are",
                )],
            )?;
            let doc = info_json(&info);
            out.result(&doc, || {
                let mut lines = vec![
                    format!("digest:     {}", info.digest),
                    format!(
                        "size:       {} ({} bytes)",
                        output::bytes(info.size),
                        info.size
                    ),
                    format!("media type: {}", info.media_type),
                    format!("created:    {}", output::time(info.created_at.as_ref())),
                    format!("last used:  {}", output::time(info.last_used_at.as_ref())),
                ];
                lines.extend(info.children.iter().map(|c| format!("child:      {c}")));
                lines
            });
        }
        ContentCmd::Get {
            digest,
            output,
            no_verify,
        } => get(client, out, &digest, output, !no_verify).await?,
        ContentCmd::Put(args) => put(client, out, args).await?,
        ContentCmd::Rm { digest } => {
            let digest = parse_digest(&digest)?;
            client.content_delete(&digest).await.explain(
                &format!("removing blob {digest}"),
                &[(
                    ErrorKind::NotFound,
                    "see `distctl content ls` for the blobs there are",
                )],
            )?;
            out.result(&json!({ "removed": digest.to_string() }), || {
                vec![format!("removed {digest}")]
            });
        }
        ContentCmd::Ingests => {
            let ingests = client
                .content_ingests()
                .await
                .explain("listing ingests", &[])?;
            let doc = Value::Array(ingests.iter().map(ingest_json).collect());
            out.result(&doc, || {
                let rows: Vec<Vec<String>> = ingests
                    .iter()
                    .map(|i| {
                        vec![
                            i.r#ref.clone(),
                            output::bytes(i.offset),
                            if i.total > 0 {
                                output::bytes(i.total)
                            } else {
                                "-".into()
                            },
                            if i.active { "yes".into() } else { "no".into() },
                            output::time(i.updated_at.as_ref()),
                        ]
                    })
                    .collect();
                Output::table(&["REF", "WRITTEN", "TOTAL", "ACTIVE", "UPDATED"], &rows)
            });
        }
        ContentCmd::Abort { ingest_ref } => {
            client.content_abort(&ingest_ref).await.explain(
                &format!("aborting ingest {ingest_ref:?}"),
                &[
                    (
                        ErrorKind::NotFound,
                        "see `distctl content ingests` for the ingests there are",
                    ),
                    (
                        ErrorKind::Unavailable,
                        "an upload is writing it now; stop that upload first",
                    ),
                ],
            )?;
            out.result(&json!({ "aborted": ingest_ref }), || {
                vec![format!("aborted {ingest_ref}")]
            });
        }
    }
    Ok(())
}

/// JSON of a blob's info.
pub fn info_json(info: &pb::Info) -> Value {
    json!({
        "digest": info.digest,
        "size": info.size,
        "media_type": info.media_type,
        "created_at": output::time_json(info.created_at.as_ref()),
        "last_used_at": output::time_json(info.last_used_at.as_ref()),
        "children": info.children,
    })
}

fn ingest_json(i: &pb::IngestStatus) -> Value {
    json!({
        "ref": i.r#ref,
        "offset": i.offset,
        "total": i.total,
        "expected": i.expected,
        "media_type": i.media_type,
        "active": i.active,
        "started_at": output::time_json(i.started_at.as_ref()),
        "updated_at": output::time_json(i.updated_at.as_ref()),
    })
}

async fn get(
    client: &Client,
    out: Output,
    digest: &str,
    output: Option<PathBuf>,
    verify: bool,
) -> anyhow::Result<()> {
    let digest = parse_digest(digest)?;
    let not_found: &[_] = &[(
        ErrorKind::NotFound,
        "see `distctl content ls` for the blobs there are",
    )];
    let info = client
        .content_info(&digest)
        .await
        .explain(&format!("blob {digest}"), not_found)?;
    let progress = Progress::bytes("get", u64::try_from(info.size).ok());
    let opts = ReadOptions {
        verify,
        ..ReadOptions::default()
    };
    let action = format!("reading blob {digest}");
    let written = match &output {
        Some(path) => {
            // A device or pipe (`-o /dev/null`) is written as is: never synced,
            // never removed on failure.
            let regular = std::fs::metadata(path).map_or(true, |m| m.is_file());
            let file = tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?;
            let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let read = client
                .read_blob_with(&digest, opts, &mut writer, |n| progress.set(n))
                .await;
            match read {
                Ok(n) => {
                    if regular {
                        writer
                            .into_inner()
                            .sync_all()
                            .await
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    n
                }
                Err(err) => {
                    drop(writer);
                    if regular {
                        let _ = tokio::fs::remove_file(path).await;
                    }
                    return Err(crate::explain::explain(err, &action, not_found));
                }
            }
        }
        None => {
            let mut stdout = tokio::io::stdout();
            client
                .read_blob_with(&digest, opts, &mut stdout, |n| progress.set(n))
                .await
                .explain(&action, not_found)?
        }
    };
    progress.finish();
    // With the blob on stdout, the result goes nowhere else.
    if let Some(path) = output {
        let doc = json!({ "digest": digest.to_string(), "size": written, "path": path });
        out.result(&doc, || {
            vec![format!("{digest} → {} ({written} bytes)", path.display())]
        });
    }
    Ok(())
}

async fn put(client: &Client, out: Output, args: PutArgs) -> anyhow::Result<()> {
    let expected = args.expected.as_deref().map(parse_digest).transpose()?;
    let stdin = args.file.as_os_str() == "-";
    let mut opts = WriteOptions {
        ingest_ref: String::new(),
        expected: expected.clone(),
        total: None,
        media_type: args.media_type.unwrap_or_default(),
        lease_id: args.lease.clone().unwrap_or_default(),
    };
    let what = if stdin {
        "stdin".to_owned()
    } else {
        args.file.display().to_string()
    };
    let mismatch = match &expected {
        Some(d) => format!("the {what} content does not match --expected {d}"),
        None => format!("{what} changed while it was being uploaded; retry"),
    };
    let busy = "another upload is writing this ingest now: wait for it, or pass another --ref";
    let lease_hint = match &args.lease {
        Some(id) => format!("check that lease {id:?} exists with `distctl lease ls`"),
        None => String::new(),
    };
    let mut hints = vec![
        (ErrorKind::DataLoss, mismatch.as_str()),
        (ErrorKind::Unavailable, busy),
    ];
    if !lease_hint.is_empty() {
        hints.push((ErrorKind::NotFound, lease_hint.as_str()));
    }
    let action = format!("uploading {what}");
    let outcome = if stdin {
        opts.ingest_ref = args.ingest_ref.unwrap_or_else(random_ref);
        let progress = Progress::bytes("put", None);
        let source = Unseekable(tokio::io::stdin());
        client
            .write_blob(&opts, source, |n| progress.set(n))
            .await
            .explain(&action, &hints)?
    } else {
        let path = &args.file;
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let meta = file
            .metadata()
            .await
            .with_context(|| format!("reading the metadata of {}", path.display()))?;
        anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
        opts.total = Some(meta.len());
        opts.ingest_ref = match args.ingest_ref {
            Some(r) => r,
            None => file_ref(path, &meta)?,
        };
        let progress = Progress::bytes("put", Some(meta.len()));
        client
            .write_blob(&opts, file, |n| progress.set(n))
            .await
            .explain(&action, &hints)?
    };
    let (digest, size, exists) = match &outcome {
        WriteOutcome::Committed { digest, size } => (digest, Some(*size), false),
        WriteOutcome::AlreadyExists(digest) => (digest, opts.total, true),
    };
    let doc = json!({ "digest": digest.to_string(), "size": size, "already_exists": exists });
    out.result(&doc, || vec![digest.to_string()]);
    Ok(())
}

/// The default ingest ref of a file: the same file (path, size, mtime) gets
/// the same ref, so re-running an interrupted put resumes it.
fn file_ref(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<String> {
    let absolute = std::fs::canonicalize(path)
        .with_context(|| format!("resolving the path of {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    Ok(derive_ref(&absolute, meta.len(), mtime))
}

/// `distctl-put-<32 hex>` from a file's absolute path, size and mtime.
pub fn derive_ref(absolute: &Path, size: u64, mtime_nanos: Option<u128>) -> String {
    let mut key = Vec::new();
    key.extend_from_slice(absolute.as_os_str().as_bytes());
    key.push(0);
    key.extend_from_slice(&size.to_le_bytes());
    key.extend_from_slice(&mtime_nanos.unwrap_or(0).to_le_bytes());
    let digest = Digest::of_bytes(Algorithm::Sha256, &key);
    format!("distctl-put-{}", &digest.hex()[..32])
}

/// A fresh random ref, for content that cannot be recognised again (stdin).
pub fn random_ref() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: fall back to the time and pid, unique enough
        // for a ref that only has to differ from concurrent uploads.
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = format!("{now}-{}", std::process::id());
        let digest = Digest::of_bytes(Algorithm::Sha256, seed.as_bytes());
        return format!("distctl-put-stdin-{}", &digest.hex()[..32]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("distctl-put-stdin-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_gets_the_same_ref_and_a_changed_one_another() {
        let path = Path::new("/data/layer.tar");
        let a = derive_ref(path, 10, Some(5));
        assert_eq!(a, derive_ref(path, 10, Some(5)));
        assert!(a.starts_with("distctl-put-") && a.len() == "distctl-put-".len() + 32);
        assert_ne!(a, derive_ref(path, 11, Some(5)));
        assert_ne!(a, derive_ref(path, 10, Some(6)));
        assert_ne!(a, derive_ref(Path::new("/data/layer2.tar"), 10, Some(5)));
    }

    #[test]
    fn stdin_refs_are_random() {
        assert_ne!(random_ref(), random_ref());
    }
}
