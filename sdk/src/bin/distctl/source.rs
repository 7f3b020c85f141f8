//! Reading files out of what `import` is given: a directory, or a tar file
//! indexed once (names → data offsets) and then read at random, so a blob in
//! an archive streams straight from the file without being buffered or
//! extracted.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use distd_sdk::client::BlobSource;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use crate::layout::{resolve_link, safe_rel_path};

/// A byte range of a file, read like a file of its own.
pub struct FileRange {
    inner: tokio::io::Take<tokio::fs::File>,
    start: u64,
    len: u64,
}

impl FileRange {
    /// Opens `len` bytes of `path` from `start`.
    pub async fn open(path: &Path, start: u64, len: u64) -> std::io::Result<Self> {
        let mut file = tokio::fs::File::open(path).await?;
        file.seek(SeekFrom::Start(start)).await?;
        Ok(FileRange {
            inner: file.take(len),
            start,
            len,
        })
    }

    /// Length of the range.
    pub fn len(&self) -> u64 {
        self.len
    }
}

impl AsyncRead for FileRange {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl BlobSource for FileRange {
    async fn seek_to(&mut self, offset: u64) -> std::io::Result<bool> {
        if offset > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end ({})", self.len),
            ));
        }
        self.inner
            .get_mut()
            .seek(SeekFrom::Start(self.start + offset))
            .await?;
        self.inner.set_limit(self.len - offset);
        Ok(true)
    }
}

/// What a tar entry is, as far as import cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: where its data starts in the archive, and its size.
    File { offset: u64, size: u64 },
    /// A symbolic or hard link to another (normalised) path of the archive.
    Link(String),
}

/// Where import reads files from.
pub enum Source {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// A tar file and the index of its regular files and links.
    Tar {
        /// The archive.
        path: PathBuf,
        /// Normalised entry name → entry.
        entries: HashMap<String, Node>,
    },
}

impl Source {
    /// Indexes the tar file at `path` (headers only; data is skipped by seeking).
    pub async fn tar(path: &Path) -> anyhow::Result<Source> {
        let owned = path.to_path_buf();
        let entries = tokio::task::spawn_blocking(move || index_tar(&owned))
            .await
            .context("indexing the archive")??;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Whether `rel` (a path made safe by [`safe_rel_path`]) exists.
    pub async fn exists(&self, rel: &str) -> bool {
        match self {
            Source::Dir(root) => tokio::fs::metadata(root.join(rel))
                .await
                .is_ok_and(|m| m.is_file()),
            Source::Tar { entries, .. } => lookup(entries, rel).is_some(),
        }
    }

    /// Opens `rel` for streaming.
    pub async fn open(&self, rel: &str) -> anyhow::Result<FileRange> {
        let rel = safe_rel_path(rel)?;
        match self {
            Source::Dir(root) => {
                let path = root.join(&rel);
                let meta = tokio::fs::metadata(&path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                if !meta.is_file() {
                    bail!("{} is not a regular file", path.display());
                }
                FileRange::open(&path, 0, meta.len())
                    .await
                    .with_context(|| format!("opening {}", path.display()))
            }
            Source::Tar { path, entries } => {
                let Some((offset, size)) = lookup(entries, &rel) else {
                    bail!("{} has no file {rel}", path.display());
                };
                FileRange::open(path, offset, size)
                    .await
                    .with_context(|| format!("reading {rel} in {}", path.display()))
            }
        }
    }

    /// Reads a small file (`index.json`, a manifest) whole; refuses files
    /// larger than `max` bytes.
    pub async fn read_small(&self, rel: &str, max: u64) -> anyhow::Result<Vec<u8>> {
        let mut range = self.open(rel).await?;
        if range.len() > max {
            bail!(
                "{rel} is {} bytes, more than the {max} allowed",
                range.len()
            );
        }
        let mut bytes = Vec::new();
        range
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading {rel}"))?;
        Ok(bytes)
    }

    /// Where the content comes from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p.display().to_string(),
        }
    }
}

/// Follows links (at most 16) to a regular file: its data offset and size.
fn lookup(entries: &HashMap<String, Node>, rel: &str) -> Option<(u64, u64)> {
    let mut name = rel.to_owned();
    for _ in 0..16 {
        match entries.get(&name)? {
            Node::File { offset, size } => return Some((*offset, *size)),
            Node::Link(target) => name = target.clone(),
        }
    }
    None
}

/// Reads every header of the tar file at `path`. Entries whose names would
/// leave the archive, and sparse or special files, are left out (a lookup of
/// them then fails as "no file").
fn index_tar(path: &Path) -> anyhow::Result<HashMap<String, Node>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let bad = || format!("{} is not a readable tar archive", path.display());
    let mut entries = HashMap::new();
    for entry in archive.entries_with_seek().with_context(bad)? {
        let entry = entry.with_context(bad)?;
        let raw_name = entry.path().with_context(bad)?;
        let Some(name) = raw_name.to_str().and_then(|n| safe_rel_path(n).ok()) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let node = if kind.is_file() || kind == tar::EntryType::Continuous {
            Node::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name().with_context(bad)? else {
                continue;
            };
            let Some(target) = target.to_str() else {
                continue;
            };
            // A symlink is relative to its directory; a hard link names a
            // path from the archive's root.
            let resolved = if kind.is_symlink() {
                resolve_link(&name, target)
            } else {
                safe_rel_path(target).ok()
            };
            match resolved {
                Some(target) => Node::Link(target),
                None => continue,
            }
        } else {
            continue;
        };
        entries.insert(name, node);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_tar(dir: &Path) -> PathBuf {
        let path = dir.join("a.tar");
        let file = std::fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(file);
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        };
        add("manifest.json", b"[]");
        add("l1/layer.tar", b"layer one");
        // The tar crate refuses to write `..`; craft the name by hand.
        let mut evil = tar::Header::new_old();
        evil.as_old_mut().name[..7].copy_from_slice(b"../evil");
        evil.set_size(1);
        evil.set_mode(0o644);
        evil.set_cksum();
        builder.append(&evil, &b"x"[..]).unwrap();
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "l2/layer.tar", "../l1/layer.tar")
            .unwrap();
        builder.finish().unwrap();
        path
    }

    #[tokio::test]
    async fn reads_files_and_links_out_of_a_tar_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::tar(&build_tar(dir.path())).await.unwrap();
        assert!(source.exists("manifest.json").await);
        assert!(!source.exists("evil").await);
        let bytes = source.read_small("./l2/layer.tar", 100).await.unwrap();
        assert_eq!(bytes, b"layer one");
        assert!(source.read_small("l1/layer.tar", 3).await.is_err());
        assert!(source.open("../evil").await.is_err());

        let mut range = source.open("l1/layer.tar").await.unwrap();
        assert!(range.seek_to(6).await.unwrap());
        let mut rest = String::new();
        range.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "one");
        assert!(range.seek_to(10).await.is_err());
    }
}
