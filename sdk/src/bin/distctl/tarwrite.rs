//! Writing a tar archive asynchronously, one entry at a time, with data
//! streamed in (never buffered whole). Headers come from the `tar` crate
//! (ustar, which holds the 77–141 character blob paths through its prefix
//! field); the rest of the format is 512-byte padding.

use anyhow::{Context, bail};
use tokio::io::{AsyncWrite, AsyncWriteExt};

const BLOCK: u64 = 512;

/// A tar archive being written to `W`.
pub struct TarWriter<W> {
    inner: W,
}

/// Modification time of every entry: fixed, so the same image exports to the
/// same bytes.
const MTIME: u64 = 0;

impl<W: AsyncWrite + Unpin> TarWriter<W> {
    /// Starts an archive on `inner`.
    pub fn new(inner: W) -> Self {
        TarWriter { inner }
    }

    /// Writes the header of an entry; a path that does not fit ustar's
    /// name and prefix fields (a sha512 blob) goes in a PAX `path` record.
    async fn header(&mut self, path: &str, size: u64, kind: tar::EntryType) -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        if header.set_path(path).is_err() {
            let record = pax_record("path", path);
            let short: String = path
                .chars()
                .rev()
                .take(90)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let mut pax = tar::Header::new_ustar();
            pax.set_path(format!("PaxHeaders/{}", short.trim_start_matches('/')))
                .with_context(|| format!("{path} cannot be a tar entry name"))?;
            Self::finish_header(&mut pax, record.len() as u64, tar::EntryType::XHeader);
            self.write(pax.as_bytes()).await?;
            self.write(record.as_bytes()).await?;
            self.pad(record.len() as u64).await?;
            header
                .set_path(&short)
                .with_context(|| format!("{path} cannot be a tar entry name"))?;
        }
        Self::finish_header(&mut header, size, kind);
        self.write(header.as_bytes()).await
    }

    fn finish_header(header: &mut tar::Header, size: u64, kind: tar::EntryType) {
        header.set_size(size);
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
    }

    /// Adds a directory entry (`path` ends with `/`).
    pub async fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        self.header(path, 0, tar::EntryType::Directory).await
    }

    /// Adds a file whose content is in memory.
    pub async fn bytes(&mut self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        self.header(path, data.len() as u64, tar::EntryType::Regular)
            .await?;
        self.write(data).await?;
        self.pad(data.len() as u64).await
    }

    /// Writes the header of a `size`-byte file; the caller then writes
    /// exactly `size` bytes to [`TarWriter::data`] and calls
    /// [`TarWriter::end_file`].
    pub async fn begin_file(&mut self, path: &str, size: u64) -> anyhow::Result<()> {
        self.header(path, size, tar::EntryType::Regular).await
    }

    /// Where a file's data goes.
    pub fn data(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Ends a file of which `written` bytes were written; `size` is what
    /// its header announced.
    pub async fn end_file(&mut self, size: u64, written: u64) -> anyhow::Result<()> {
        if written != size {
            bail!("wrote {written} bytes of an entry announced as {size}");
        }
        self.pad(size).await
    }

    /// Writes the end-of-archive marker and flushes; returns the writer.
    pub async fn finish(mut self) -> anyhow::Result<W> {
        self.write(&[0u8; 2 * BLOCK as usize]).await?;
        self.inner.flush().await.context("writing the archive")?;
        Ok(self.inner)
    }

    async fn pad(&mut self, size: u64) -> anyhow::Result<()> {
        let rest = (BLOCK - size % BLOCK) % BLOCK;
        self.write(&[0u8; BLOCK as usize][..rest as usize]).await
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.inner
            .write_all(bytes)
            .await
            .context("writing the archive")
    }
}

/// One PAX extended-header record: `<length> <key>=<value>\n`, where the
/// length counts the whole record, its own digits included.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn writes_an_archive_the_tar_crate_reads_back() {
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        let mut w = TarWriter::new(Vec::new());
        w.dir("blobs/").await.unwrap();
        w.bytes("oci-layout", b"{}").await.unwrap();
        w.begin_file(&long, 3).await.unwrap();
        w.data().write_all(b"abc").await.unwrap();
        w.end_file(3, 3).await.unwrap();
        let bytes = w.finish().await.unwrap();
        assert_eq!(bytes.len() % 512, 0);

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            seen.push((entry.path().unwrap().display().to_string(), data));
        }
        assert_eq!(
            seen,
            [
                ("blobs/".to_owned(), String::new()),
                ("oci-layout".to_owned(), "{}".to_owned()),
                (long, "abc".to_owned()),
            ]
        );
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("path", "a"), "9 path=a\n");
        let r = pax_record("path", &"x".repeat(95));
        assert_eq!(r.len(), 105);
        assert!(r.starts_with("105 path="));
    }

    #[tokio::test]
    async fn a_short_entry_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        w.begin_file("x", 3).await.unwrap();
        assert!(w.end_file(3, 2).await.is_err());
    }
}
