//! The content store through its API and `distctl content`: round trips,
//! digest checks, bad input, and concurrent writers.

use std::collections::BTreeSet;
use std::fs;

use distd_sdk::media;
use distd_tests::data::{random_bytes, sha256, sha256_file, write_random_file};
use distd_tests::rpc::{self, Ingest, WriteStream, expect_code};
use distd_tests::{Daemon, MIB, args, distctl, pb};
use tonic::Code;

/// A 256 MiB file goes in with `distctl content put` and comes back out with
/// `distctl content get` byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_256_mib_round_trips_through_distctl() {
    let d = Daemon::start();
    let src = d.work().join("big.bin");
    let size = 256 * MIB as u64;
    let digest = write_random_file(&src, size, 1);

    let put = distctl(&d, args!["--json", "content", "put", &src]);
    let doc = put.success().json();
    assert_eq!(
        doc["digest"],
        digest.as_str(),
        "put reports the file's digest: {doc}"
    );

    let client = d.client().await;
    let info = rpc::info(&client, &digest)
        .await
        .expect("Info of the put blob");
    assert_eq!(info.size as u64, size);

    let out = d.work().join("big.out");
    distctl(&d, args!["content", "get", &digest, "-o", &out]).success();
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    assert_eq!(
        sha256_file(&out),
        digest,
        "get returned other bytes than put"
    );
    assert!(
        rpc::ingests(&client).await.unwrap().is_empty(),
        "a committed put leaves no ingest"
    );
    rpc::assert_verify_clean(&client).await;
}

/// `put --expected` with the wrong digest fails with a message about the
/// mismatch (DATA_LOSS over gRPC) and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_wrong_expected_digest_is_refused_and_commits_nothing() {
    let d = Daemon::start();
    let client = d.client().await;
    // Something already in the store, to show the count does not move.
    rpc::put(&client, &Ingest::new("other"), &random_bytes(10, 1000))
        .await
        .expect("put an unrelated blob");
    let before = rpc::list(&client).await.unwrap().len();

    let src = d.work().join("small.bin");
    let digest = write_random_file(&src, 3 * MIB as u64 + 17, 2);
    let wrong = sha256(b"something else entirely");

    let cli = distctl(
        &d,
        args![
            "content",
            "put",
            "--expected",
            &wrong,
            "--ref",
            "mismatch-cli",
            &src
        ],
    );
    let line = cli.failure();
    assert!(
        line.contains("match") && line.contains(&wrong),
        "the error should say the content does not match {wrong}: {line}"
    );

    let bytes = fs::read(&src).unwrap();
    let status = expect_code(
        rpc::put(
            &client,
            &Ingest::new("mismatch-sdk").expected(&wrong),
            &bytes,
        )
        .await,
        Code::DataLoss,
        "COMMIT with a wrong expected digest",
    );
    assert!(
        status.message().contains(&wrong) || status.message().contains(&digest),
        "the DATA_LOSS message should name the digests: {}",
        status.message()
    );
    expect_code(
        rpc::put(
            &client,
            &Ingest::new("mismatch-size").total(bytes.len() as u64 + 1),
            &bytes,
        )
        .await,
        Code::DataLoss,
        "COMMIT with a wrong total size",
    );

    let after = rpc::list(&client).await.unwrap();
    assert_eq!(after.len(), before, "nothing was committed: {after:#?}");
    expect_code(
        rpc::info(&client, &digest).await,
        Code::NotFound,
        "Info of the refused content",
    );
    let ingests = rpc::ingests(&client).await.unwrap();
    assert!(
        ingests.is_empty(),
        "a digest or size mismatch discards the ingest; left: {ingests:#?}"
    );
    rpc::assert_verify_clean(&client).await;
    distctl(&d, args!["verify"]).success();
}

/// Malformed digests, unparseable manifests and dangling image targets are
/// refused with the right codes, and nothing is created outside the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_touching_anything_outside_the_root() {
    let d = Daemon::start();
    let client = d.client().await;
    // A sentinel next to the root: a path traversal from blobs/sha256/ with
    // three `..` lands here.
    let sentinel = d.dir().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("victim"), b"keep me").unwrap();
    let outside = || {
        Daemon::files_under(d.dir())
            .into_iter()
            .filter(|p| !p.starts_with(d.root()) && !p.ends_with("distd.log"))
            .collect::<Vec<_>>()
    };
    let before = outside();

    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let bad_digests = [
        "sha256:../../x".to_owned(),
        "sha256:../../../sentinel/victim".to_owned(),
        format!("sha256:{}", hex.to_uppercase()),
        "sha256:e3b0c442".to_owned(),
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_owned(),
        hex.to_owned(),
        format!("sha256:{hex}/"),
    ];
    for bad in &bad_digests {
        for (what, result) in [
            ("Info", rpc::info(&client, bad).await.map(|_| ())),
            ("Read", rpc::read(&client, bad).await.map(|_| ())),
            ("Delete", rpc::delete(&client, bad).await),
        ] {
            let status = expect_code(result, Code::InvalidArgument, &format!("{what} {bad:?}"));
            assert!(
                status.message().contains(bad.as_str()),
                "{what} {bad:?}: the message should name the digest: {}",
                status.message()
            );
        }
    }

    // A manifest that is not JSON.
    expect_code(
        rpc::put(
            &client,
            &Ingest::new("not-json").media_type(media::OCI_MANIFEST),
            b"this is { not json",
        )
        .await,
        Code::InvalidArgument,
        "COMMIT of a manifest that is not JSON",
    );
    // A manifest whose child digest is malformed.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {
            "mediaType": media::OCI_CONFIG,
            "digest": "sha256:../../../sentinel/victim",
            "size": 2,
        },
        "layers": [],
    });
    expect_code(
        rpc::put(
            &client,
            &Ingest::new("bad-child").media_type(media::OCI_MANIFEST),
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await,
        Code::InvalidArgument,
        "COMMIT of a manifest with a malformed child digest",
    );

    // An image whose target is not in the store.
    let absent = sha256(b"never written");
    let create = |name: &str, digest: &str| pb::CreateImageRequest {
        image: Some(pb::Image {
            name: name.to_owned(),
            target: Some(pb::Descriptor {
                media_type: media::OCI_MANIFEST.to_owned(),
                digest: digest.to_owned(),
                size: 123,
                annotations: Default::default(),
            }),
            labels: Default::default(),
            times: None,
        }),
    };
    expect_code(
        client
            .images()
            .create(create("example.com/absent:1", &absent))
            .await,
        Code::FailedPrecondition,
        "Images.Create with an absent target",
    );
    expect_code(
        client
            .images()
            .create(create(
                "example.com/bad:1",
                "sha256:../../../sentinel/victim",
            ))
            .await,
        Code::InvalidArgument,
        "Images.Create with a malformed target digest",
    );
    let images = client
        .images()
        .list(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "no image was created: {images:#?}");

    // A ref is any string: one that looks like a path must stay a name.
    let evil = Ingest::new("../../../sentinel/evil");
    let data = random_bytes(11, 4096);
    let (mut stream, _) = WriteStream::open(&client, evil.stat())
        .await
        .expect("a ref that looks like a path is still a valid ref");
    stream.write_all(&evil, 0, &data).await.expect("WRITE");
    let ingests = rpc::ingests(&client).await.unwrap();
    assert!(
        ingests.iter().any(|i| i.r#ref == evil.r#ref),
        "ListIngests shows the ref verbatim: {ingests:#?}"
    );
    stream
        .commit(&evil, data.len() as u64)
        .await
        .expect("COMMIT");
    stream.close();

    assert_eq!(
        fs::read(sentinel.join("victim")).unwrap(),
        b"keep me",
        "the sentinel outside the root is untouched"
    );
    assert_eq!(outside(), before, "files were created outside the root");
    rpc::assert_verify_clean(&client).await;
}

/// A second Write stream on a ref that a live stream holds gets UNAVAILABLE
/// (and so does Abort); the holder then commits normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_held_by_a_live_stream_is_unavailable_to_others() {
    let d = Daemon::start();
    let client = d.client().await;
    let data = random_bytes(20, 3 * MIB);
    let ingest = Ingest::new("held").expected(sha256(&data));

    let (mut holder, _) = WriteStream::open(&client, ingest.stat()).await.unwrap();
    holder.write_all(&ingest, 0, &data[..MIB]).await.unwrap();

    expect_code(
        WriteStream::open(&client, ingest.stat())
            .await
            .map(|(_, r)| r),
        Code::Unavailable,
        "a second Write stream on a held ref",
    );
    expect_code(
        client
            .content()
            .abort(pb::AbortRequest {
                r#ref: ingest.r#ref.clone(),
            })
            .await,
        Code::Unavailable,
        "Abort of a held ref",
    );

    holder
        .write_all(&ingest, MIB as u64, &data[MIB..])
        .await
        .unwrap();
    let done = holder
        .commit(&ingest, data.len() as u64)
        .await
        .expect("the holder commits");
    assert_eq!(done.digest, sha256(&data));
    holder.close();
    assert_eq!(rpc::read(&client, &done.digest).await.unwrap(), data);
}

/// Two refs that commit the same bytes at the same time: one commits, the
/// other is told the blob exists (or both see it committed); the store stays
/// consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refs_committing_the_same_digest_concurrently_leave_one_blob() {
    let d = Daemon::start();
    let client = d.client().await;
    let mut digests = BTreeSet::new();
    for round in 0..4u64 {
        let data = random_bytes(100 + round, 8 * MIB);
        let digest = sha256(&data);
        let a = Ingest::new(format!("same-{round}-a"));
        let b = Ingest::new(format!("same-{round}-b"));
        let (mut sa, _) = WriteStream::open(&client, a.stat()).await.unwrap();
        let (mut sb, _) = WriteStream::open(&client, b.stat()).await.unwrap();
        sa.write_all(&a, 0, &data).await.unwrap();
        sb.write_all(&b, 0, &data).await.unwrap();
        let len = data.len() as u64;
        let (ra, rb) = tokio::join!(sa.commit(&a, len), sb.commit(&b, len));
        let mut committed = 0;
        for (which, result) in [("a", &ra), ("b", &rb)] {
            match result {
                Ok(response) => {
                    assert_eq!(response.digest, digest, "round {round} {which}");
                    committed += 1;
                }
                Err(status) => assert_eq!(
                    status.code(),
                    Code::AlreadyExists,
                    "round {round} {which}: {}",
                    status.message()
                ),
            }
        }
        assert!(
            committed >= 1,
            "round {round}: neither commit succeeded: {ra:?} {rb:?}"
        );
        let info = rpc::info(&client, &digest)
            .await
            .expect("the blob is there");
        assert_eq!(info.size as u64, len);
        assert_eq!(sha256(&rpc::read(&client, &digest).await.unwrap()), digest);
        digests.insert(digest);
    }
    let listed: BTreeSet<String> = rpc::list(&client)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert_eq!(listed, digests, "one blob per digest");
    let ingests = rpc::ingests(&client).await.unwrap();
    assert!(ingests.is_empty(), "no ingest is left behind: {ingests:#?}");
    rpc::assert_verify_clean(&client).await;
}

/// The codes the Content RPCs document for the ordinary mistakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_rpcs_return_their_documented_codes() {
    let d = Daemon::start();
    let client = d.client().await;
    let data = random_bytes(30, MIB + 100);
    let digest = sha256(&data);
    let absent = sha256(b"absent");

    expect_code(
        rpc::info(&client, &absent).await,
        Code::NotFound,
        "Info of an absent blob",
    );
    expect_code(
        rpc::read(&client, &absent).await,
        Code::NotFound,
        "Read of an absent blob",
    );
    expect_code(
        rpc::delete(&client, &absent).await,
        Code::NotFound,
        "Delete of an absent blob",
    );
    expect_code(
        client
            .content()
            .abort(pb::AbortRequest {
                r#ref: "no-such-ingest".to_owned(),
            })
            .await,
        Code::NotFound,
        "Abort of an absent ingest",
    );

    // WRITE at the wrong offset; then offset 0 on a non-empty ingest restarts it.
    let ingest = Ingest::new("offsets");
    let (mut stream, _) = WriteStream::open(&client, ingest.stat()).await.unwrap();
    stream
        .write_all(&ingest, 0, &random_bytes(31, 1000))
        .await
        .unwrap();
    expect_code(
        stream
            .send(ingest.request(pb::WriteAction::Write, 5000, b"gap"))
            .await,
        Code::FailedPrecondition,
        "WRITE past the current offset",
    );
    let (mut stream, stat) = match stream.send(ingest.stat()).await {
        Ok(stat) => (stream, stat),
        // The error may have ended the stream: reopen it.
        Err(_) => WriteStream::open(&client, ingest.stat()).await.unwrap(),
    };
    assert_eq!(stat.offset, 1000, "a refused WRITE changes nothing");
    let restarted = stream.write_all(&ingest, 0, &data).await.unwrap();
    assert_eq!(restarted, data.len() as u64, "offset 0 restarts the ingest");
    let done = stream.commit(&ingest, data.len() as u64).await.unwrap();
    stream.close();
    assert_eq!(
        done.digest, digest,
        "the restarted ingest holds only the new bytes"
    );
    assert_eq!(done.offset as usize, data.len());

    // Reads: ranges, and past the end.
    let range = client
        .content()
        .read(pb::ReadContentRequest {
            digest: digest.clone(),
            offset: 10,
            size: 20,
        })
        .await
        .unwrap();
    let mut range = range.into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = range.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, data[10..30]);
    let past_end = async {
        let mut stream = client
            .content()
            .read(pb::ReadContentRequest {
                digest: digest.clone(),
                offset: data.len() as i64 + 1,
                size: 0,
            })
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    expect_code(past_end.await, Code::OutOfRange, "Read past the end");

    // ALREADY_EXISTS: at COMMIT of known bytes, and as soon as a stored
    // digest is named as expected.
    expect_code(
        rpc::put(&client, &Ingest::new("dup"), &data).await,
        Code::AlreadyExists,
        "committing bytes the store has",
    );
    expect_code(
        WriteStream::open(&client, Ingest::new("dup-early").expected(&digest).stat())
            .await
            .map(|(_, r)| r),
        Code::AlreadyExists,
        "naming a stored digest as expected",
    );

    rpc::delete(&client, &digest).await.expect("Delete");
    expect_code(
        rpc::info(&client, &digest).await,
        Code::NotFound,
        "Info after Delete",
    );
    let ingests = rpc::ingests(&client).await.unwrap();
    assert!(
        ingests.iter().all(|i| i.r#ref != "offsets"),
        "a committed ingest is gone: {ingests:#?}"
    );
    rpc::assert_verify_clean(&client).await;
}
