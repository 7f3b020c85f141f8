//! The upload session of a multipart upload, as the daemon persists it:
//! `UploadSession { location: {"upload_id", "part_size", "parts"}, offset }`.

use distd_sdk::UploadSession;
use serde::{Deserialize, Serialize};

/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;

/// A multipart upload in progress: its id, its part size and the content
/// ids (ETags) of the parts S3 acknowledged, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Multipart {
    /// S3's upload id.
    pub upload_id: String,
    /// Bytes per part (every part but the last).
    pub part_size: u64,
    /// Content ids of the uploaded parts, part 0 first.
    pub parts: Vec<String>,
}

impl Multipart {
    /// Bytes acknowledged: every uploaded part is full.
    pub(crate) fn offset(&self) -> u64 {
        self.parts.len() as u64 * self.part_size
    }

    /// The session the daemon persists.
    pub(crate) fn to_session(&self) -> UploadSession {
        // Serializing strings and integers cannot fail.
        let location = serde_json::to_string(self).unwrap_or_default();
        UploadSession {
            location,
            offset: self.offset(),
        }
    }

    /// The upload a session describes, if it is one of ours and fits a blob
    /// of `size` bytes; `None` means start a new upload.
    pub(crate) fn from_session(session: &UploadSession, size: u64) -> Option<Multipart> {
        let multipart: Multipart = serde_json::from_str(&session.location).ok()?;
        let fits = !multipart.upload_id.is_empty()
            && (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&multipart.part_size)
            && multipart.offset() <= size
            && size.div_ceil(multipart.part_size) <= MAX_PARTS
            && multipart.parts.iter().all(|p| !p.is_empty());
        fits.then_some(multipart)
    }
}

/// The part size for a blob of `size` bytes: `configured`, raised (to a
/// whole MiB) when the blob would need more than S3's 10,000 parts.
pub(crate) fn part_size_for(configured: u64, size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    configured.max(needed).max(MIN_PART_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_through_json() {
        let multipart = Multipart {
            upload_id: "abc/def=".into(),
            part_size: MIN_PART_SIZE,
            parts: vec!["\"etag1\"".into(), "\"etag2\"".into()],
        };
        let session = multipart.to_session();
        assert_eq!(session.offset, 2 * MIN_PART_SIZE);
        assert!(session.location.contains("\"upload_id\":\"abc/def=\""));
        assert_eq!(
            Multipart::from_session(&session, 4 * MIN_PART_SIZE),
            Some(multipart)
        );
    }

    #[test]
    fn foreign_or_unfitting_sessions_start_a_new_upload() {
        let session = |location: &str| UploadSession {
            location: location.to_owned(),
            offset: 0,
        };
        let size = 100 * MIN_PART_SIZE;
        for bad in [
            "http://registry.test/v2/x/blobs/uploads/1",
            "{}",
            r#"{"upload_id":"","part_size":5242880,"parts":[]}"#,
            r#"{"upload_id":"u","part_size":1024,"parts":[]}"#,
            r#"{"upload_id":"u","part_size":5242880,"parts":[""]}"#,
        ] {
            assert_eq!(Multipart::from_session(&session(bad), size), None, "{bad}");
        }
        let ok = r#"{"upload_id":"u","part_size":5242880,"parts":["a","b"]}"#;
        assert!(Multipart::from_session(&session(ok), size).is_some());
        // More acknowledged than the blob holds.
        assert_eq!(Multipart::from_session(&session(ok), MIN_PART_SIZE), None);
    }

    #[test]
    fn huge_blobs_get_larger_parts() {
        assert_eq!(part_size_for(16 << 20, 1 << 30), 16 << 20);
        let size = 500u64 << 30;
        let part = part_size_for(16 << 20, size);
        assert!(size.div_ceil(part) <= MAX_PARTS);
        assert_eq!(part % (1 << 20), 0);
    }
}
