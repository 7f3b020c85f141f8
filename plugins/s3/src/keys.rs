//! Object keys of Docker Distribution's storage layout (2.8), built only from
//! validated values: a [`Digest`] (lower-case hex), a repository name and a
//! tag checked against the distribution grammar again here, and the root
//! directory checked when the transport is built.
//!
//! ```text
//! R/docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data
//! R/docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
//! R/docker/registry/v2/repositories/<name>/_manifests/revisions/<alg>/<hex>/link
//! R/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! R/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link
//! ```

use distd_sdk::{Digest, ErrorKind};
use object_store::path::Path;

use crate::error::S3Error;

/// Longest repository name the distribution grammar allows.
const MAX_REPOSITORY_LEN: usize = 255;

/// Longest tag the distribution grammar allows.
const MAX_TAG_LEN: usize = 128;

/// A repository name that passed [`repository`]: safe in a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Repo<'a>(&'a str);

impl Repo<'_> {
    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        self.0
    }
}

/// A tag that passed [`tag`]: safe in a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag<'a>(&'a str);

/// Checks a repository name: `/`-separated components of `[a-z0-9._-]`,
/// none empty, each starting and ending with `[a-z0-9]` (so no `.` or `..`).
pub(crate) fn repository(name: &str) -> Result<Repo<'_>, S3Error> {
    let bad = |why: &str| {
        S3Error::invalid(
            ErrorKind::InvalidArgument,
            format!("repository name {name:?} is not valid: {why}"),
        )
    };
    if name.is_empty() || name.len() > MAX_REPOSITORY_LEN {
        return Err(bad("it must have 1 to 255 characters"));
    }
    for component in name.split('/') {
        let alnum = |b: Option<&u8>| b.is_some_and(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9'));
        let bytes = component.as_bytes();
        if !alnum(bytes.first()) || !alnum(bytes.last()) {
            return Err(bad(
                "every path component must start and end with a lower-case letter or digit",
            ));
        }
        if !bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        {
            return Err(bad(
                "only lower-case letters, digits, '.', '_', '-' and '/'",
            ));
        }
    }
    Ok(Repo(name))
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn tag(tag: &str) -> Result<Tag<'_>, S3Error> {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let valid = tag.len() <= MAX_TAG_LEN
        && tag.as_bytes().first().is_some_and(word)
        && tag
            .as_bytes()
            .iter()
            .all(|b| word(b) || matches!(b, b'.' | b'-'));
    if valid {
        Ok(Tag(tag))
    } else {
        Err(S3Error::invalid(
            ErrorKind::InvalidArgument,
            format!("tag {tag:?} is not valid: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"),
        ))
    }
}

/// Normalizes a root directory (`/root1/` → `root1`) and checks that it is
/// a plain key prefix.
pub(crate) fn root(root_directory: &str) -> Result<String, S3Error> {
    let trimmed = root_directory.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let components_ok = trimmed
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !components_ok || Path::parse(trimmed).is_err() {
        return Err(S3Error::Config(format!(
            "root_directory {root_directory:?} is not a valid key prefix: use /-separated \
             names without empty, '.' or '..' components"
        )));
    }
    Ok(trimmed.to_owned())
}

/// The key builder of one bucket root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `R/docker/registry/v2`, without a leading `/`.
    base: String,
}

impl Layout {
    /// The layout under `root` (already normalized by [`root`]).
    pub(crate) fn new(root: &str) -> Layout {
        let base = if root.is_empty() {
            "docker/registry/v2".to_owned()
        } else {
            format!("{root}/docker/registry/v2")
        };
        Layout { base }
    }

    fn path(key: String) -> Result<Path, S3Error> {
        Path::parse(&key).map_err(|e| {
            S3Error::invalid(ErrorKind::InvalidArgument, format!("bad key {key:?}: {e}"))
        })
    }

    /// `R/docker/registry/v2`, what health lists.
    pub(crate) fn base(&self) -> Result<Path, S3Error> {
        Self::path(self.base.clone())
    }

    /// The blob data of `digest`.
    pub(crate) fn blob_data(&self, digest: &Digest) -> Result<Path, S3Error> {
        let hex = digest.hex();
        Self::path(format!(
            "{}/blobs/{}/{}/{hex}/data",
            self.base,
            digest.algorithm().name(),
            &hex[..2]
        ))
    }

    /// Everything of repository `repo`.
    pub(crate) fn repository(&self, repo: Repo<'_>) -> Result<Path, S3Error> {
        Self::path(format!("{}/repositories/{}", self.base, repo.0))
    }

    fn digest_link(&self, repo: Repo<'_>, dir: &str, digest: &Digest) -> Result<Path, S3Error> {
        Self::path(format!(
            "{}/repositories/{}/{dir}/{}/{}/link",
            self.base,
            repo.0,
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// The link that makes `digest` a blob (config or layer) of `repo`.
    pub(crate) fn layer_link(&self, repo: Repo<'_>, digest: &Digest) -> Result<Path, S3Error> {
        self.digest_link(repo, "_layers", digest)
    }

    /// The link that makes `digest` a manifest revision of `repo`.
    pub(crate) fn revision_link(&self, repo: Repo<'_>, digest: &Digest) -> Result<Path, S3Error> {
        self.digest_link(repo, "_manifests/revisions", digest)
    }

    /// The link naming the manifest `tag` points at.
    pub(crate) fn tag_current(&self, repo: Repo<'_>, tag: Tag<'_>) -> Result<Path, S3Error> {
        Self::path(format!(
            "{}/repositories/{}/_manifests/tags/{}/current/link",
            self.base, repo.0, tag.0
        ))
    }

    /// The link recording that `tag` has pointed at `digest`.
    pub(crate) fn tag_index(
        &self,
        repo: Repo<'_>,
        tag: Tag<'_>,
        digest: &Digest,
    ) -> Result<Path, S3Error> {
        let dir = format!("_manifests/tags/{}/index", tag.0);
        self.digest_link(repo, &dir, digest)
    }
}

/// The content of a link to `digest`: exactly `sha256:<hex>`.
pub(crate) fn link_content(digest: &Digest) -> String {
    digest.to_string()
}

/// Parses a link's content (surrounding whitespace tolerated) as a digest.
pub(crate) fn parse_link(key: &Path, bytes: &[u8]) -> Result<Digest, S3Error> {
    let text = std::str::from_utf8(bytes).unwrap_or("").trim();
    Digest::parse(text).map_err(|e| {
        S3Error::invalid(
            ErrorKind::Unavailable,
            format!("{key} does not hold a digest: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{HEX}")).unwrap()
    }

    #[test]
    fn keys_follow_the_distribution_layout_under_the_root() {
        let layout = Layout::new(&root("/root1/").unwrap());
        let repo = repository("library/alpine").unwrap();
        let d = digest();
        assert_eq!(
            layout.blob_data(&d).unwrap().as_ref(),
            format!("root1/docker/registry/v2/blobs/sha256/e3/{HEX}/data")
        );
        let repos = "root1/docker/registry/v2/repositories/library/alpine";
        assert_eq!(
            layout.layer_link(repo, &d).unwrap().as_ref(),
            format!("{repos}/_layers/sha256/{HEX}/link")
        );
        assert_eq!(
            layout.revision_link(repo, &d).unwrap().as_ref(),
            format!("{repos}/_manifests/revisions/sha256/{HEX}/link")
        );
        let t = tag("v1.0_rc-2").unwrap();
        assert_eq!(
            layout.tag_current(repo, t).unwrap().as_ref(),
            format!("{repos}/_manifests/tags/v1.0_rc-2/current/link")
        );
        assert_eq!(
            layout.tag_index(repo, t, &d).unwrap().as_ref(),
            format!("{repos}/_manifests/tags/v1.0_rc-2/index/sha256/{HEX}/link")
        );
        assert_eq!(layout.repository(repo).unwrap().as_ref(), repos);
        let bare = Layout::new(&root("").unwrap());
        assert_eq!(bare.base().unwrap().as_ref(), "docker/registry/v2");
        assert_eq!(link_content(&d), format!("sha256:{HEX}"));
    }

    #[test]
    fn repositories_and_tags_that_could_escape_are_refused() {
        for good in ["a", "library/alpine", "a.b/c_d/e-f", "x__y", "0/1"] {
            assert!(repository(good).is_ok(), "{good}");
        }
        for bad in [
            "", "../x", "a/../b", "a//b", "/a", "a/", "A", "a/.", "a/.b", "a b", "a\\b", "a%2f",
            "a-",
        ] {
            let e = repository(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        assert!(repository(&"a".repeat(256)).is_err());
        for good in ["latest", "_x", "V1.2-3", &"a".repeat(128)] {
            assert!(tag(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", "a:b", &"a".repeat(129)] {
            assert!(tag(bad).is_err(), "{bad}");
        }
        for bad in ["a/../b", "a//b", "./a"] {
            assert!(root(bad).is_err(), "{bad}");
        }
        assert_eq!(root("/").unwrap(), "");
        assert_eq!(root("/a/b").unwrap(), "a/b");
    }

    #[test]
    fn links_hold_a_digest() {
        let key = Path::from("k");
        let d = digest();
        assert_eq!(
            parse_link(&key, format!("sha256:{HEX}").as_bytes()).unwrap(),
            d
        );
        assert_eq!(
            parse_link(&key, format!("sha256:{HEX}\n").as_bytes()).unwrap(),
            d
        );
        let e = parse_link(&key, b"sha256:../../etc").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().starts_with("k does not hold a digest"), "{e}");
        assert!(parse_link(&key, &[0xff, 0xfe]).is_err());
    }
}
