//! Routes of several transports: mid-blob failover at the stored offset,
//! stalls, bad bytes skipped to the next transport, and resolution by the
//! authoritative transports only.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fake::*;
use super::*;

fn named(name: &str, fake: Fake) -> Fake {
    Fake {
        name: Some(name.into()),
        fetch_only: true,
        ..fake
    }
}

/// A registry-like fake holding image `seed` tagged `1.0`, and one of its
/// big layers (over 100 000 bytes).
fn origin_of(seed: u8) -> (Fake, Digest) {
    let mut origin = Fake::default();
    let manifest = origin.image(seed);
    origin.tags.insert("1.0".into(), manifest);
    let layer = big_layer(&origin);
    (origin, layer)
}

/// A fetch-only transport `name` behaving as `behaviour` says, holding
/// `origin`'s blobs.
fn copy_of(name: &str, behaviour: Fake, origin: &Fake) -> Fake {
    Fake {
        blobs: origin.blobs.clone(),
        ..named(name, behaviour)
    }
}

/// A big layer of `origin`'s image (over 100 000 bytes).
fn big_layer(origin: &Fake) -> Digest {
    origin
        .blobs
        .iter()
        .find(|(_, b)| b.len() > 100_000)
        .map(|(d, _)| d.clone())
        .unwrap()
}

fn transports_of_starts(events: &[Event], digest: &Digest) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::BlobStarted {
                digest: d,
                transport,
                resume_offset,
                ..
            } if d == digest => Some((transport.clone(), *resume_offset)),
            _ => None,
        })
        .collect()
}

fn bytes_by_transport(events: &[Event]) -> std::collections::BTreeMap<String, u64> {
    match events.last() {
        Some(Event::Done {
            bytes_by_transport, ..
        }) => bytes_by_transport.clone(),
        other => panic!("the last event is not Done: {other:?}"),
    }
}

#[tokio::test]
async fn a_transport_that_dies_mid_blob_hands_over_at_the_stored_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (origin, layer) = origin_of(3);
    let flaky = copy_of(
        "flaky",
        Fake {
            cut_after: Some(150_000),
            ..Fake::default()
        },
        &origin,
    );
    let (flaky, origin) = (Arc::new(flaky), Arc::new(origin));
    let (result, events) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route(
            "reg.test/app:1.0",
            &[Arc::clone(&flaky), Arc::clone(&origin)],
        ),
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    // The registry-like origin resolved; the layer started on flaky and
    // went on at 150 000 on the origin, which never sent its head.
    assert!(matches!(&events[0], Event::Resolved { transport, .. } if transport == "fake"));
    assert_eq!(
        transports_of_starts(&events, &layer),
        [("flaky".to_owned(), 0), ("fake".to_owned(), 150_000)]
    );
    assert_eq!(origin.fetches.lock().unwrap()[&layer], [150_000]);
    let moved = bytes_by_transport(&events);
    assert!(moved["flaky"] >= 150_000, "{moved:?}");
    assert!(moved["fake"] > 0, "{moved:?}");
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_stalled_transport_is_given_up_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (origin, _) = origin_of(4);
    let stuck = copy_of(
        "stuck",
        Fake {
            stall_after: Some(1000),
            ..Fake::default()
        },
        &origin,
    );
    let options = PullOptions {
        stall_timeout: Duration::from_millis(300),
        ..PullOptions::default()
    };
    let (result, events) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route("reg.test/app:1.0", &[Arc::new(stuck), Arc::new(origin)]),
        "reg.test/app:1.0",
        options,
    )
    .await;
    result.unwrap();
    let warned = events.iter().any(
        |e| matches!(e, Event::Warning(w) if w.contains("stuck failed") && w.contains("stalled")),
    );
    assert!(warned, "{events:?}");
    // Every blob went on on the origin where the stuck transport stopped.
    let sizes: Vec<(Digest, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::BlobStarted {
                digest,
                size,
                transport,
                ..
            } if transport == "stuck" => Some((digest.clone(), *size)),
            _ => None,
        })
        .collect();
    assert!(sizes.iter().any(|(_, size)| *size > 1000), "{events:?}");
    for (digest, size) in sizes {
        assert_eq!(
            transports_of_starts(&events, &digest),
            [("stuck".to_owned(), 0), ("fake".to_owned(), size.min(1000))]
        );
    }
}

#[tokio::test]
async fn bad_bytes_are_counted_and_the_next_transport_serves_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (origin, layer) = origin_of(5);
    let liar = copy_of(
        "liar",
        Fake {
            corrupt: Some(layer.clone()),
            ..Fake::default()
        },
        &origin,
    );
    let route = route("reg.test/app:1.0", &[Arc::new(liar), Arc::new(origin)]);
    let liar_stats = Arc::clone(&route.hops[0].stats);
    let (result, events) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route,
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    assert_eq!(liar_stats.bad_blobs.load(Ordering::Relaxed), 1);
    assert_eq!(
        transports_of_starts(&events, &layer),
        [("liar".to_owned(), 0), ("fake".to_owned(), 0)]
    );
    assert!(store.info(&layer).await.is_ok());
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn only_transports_that_resolve_are_asked_for_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut fetch_only = named("cache", Fake::default());
    let manifest = fetch_only.image(6);
    // The cache knows the tag but is not authoritative: not asked.
    fetch_only.tags.insert("1.0".into(), manifest);
    let (result, _) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route("reg.test/app:1.0", &[Arc::new(fetch_only)]),
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), distd_sdk::ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("can resolve tags"), "{err}");
}

#[tokio::test]
async fn a_ranged_transport_that_keeps_failing_backs_off_then_a_whole_blob_transport_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (mut origin, layer) = origin_of(7);
    // Sends 150 000 bytes, then cannot continue from an offset.
    let ranged = copy_of(
        "ranged",
        Fake {
            cut_after: Some(150_000),
            fail_ranged: true,
            ..Fake::default()
        },
        &origin,
    );
    let whole = copy_of(
        "whole",
        Fake {
            whole_only: true,
            ..Fake::default()
        },
        &origin,
    );
    let (ranged, whole) = (Arc::new(ranged), Arc::new(whole));
    // The resolver holds no blob: its fetches are NOT_FOUND.
    origin.blobs.clear();
    let route = route(
        "reg.test/app:1.0",
        &[Arc::new(origin), Arc::clone(&ranged), Arc::clone(&whole)],
    );
    let started = std::time::Instant::now();
    let (result, events) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route,
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    let starts = transports_of_starts(&events, &layer);
    // One try from 0, then retries at the offset (never the whole-blob
    // transport, which would throw the bytes away) until they are deemed
    // persistent; then the whole-blob transport starts over.
    let at_offset = vec![("ranged".to_owned(), 150_000); fetch::MAX_RETRIES as usize - 1];
    let mut expected = vec![("fake".to_owned(), 0), ("ranged".to_owned(), 0)];
    expected.extend(at_offset);
    expected.push(("whole".to_owned(), 0));
    assert_eq!(starts, expected);
    assert_eq!(whole.fetches.lock().unwrap()[&layer], [0]);
    // Backed off between the retries (the same transport going again):
    // 200 + 200 + 400 + 400 ms with two transports left.
    assert!(started.elapsed() >= Duration::from_millis(1200));
}

#[tokio::test]
async fn bytes_past_the_declared_size_are_blamed_on_the_transport_that_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (origin, layer) = origin_of(8);
    let liar = copy_of(
        "liar",
        Fake {
            overrun: true,
            ..Fake::default()
        },
        &origin,
    );
    let blob_count = origin.blobs.len() as u64;
    let route = route("reg.test/app:1.0", &[Arc::new(liar), Arc::new(origin)]);
    let (liar_stats, origin_stats) = (
        Arc::clone(&route.hops[0].stats),
        Arc::clone(&route.hops[1].stats),
    );
    let (result, events) = pull_route(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        route,
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    result.unwrap();
    assert_eq!(
        transports_of_starts(&events, &layer),
        [("liar".to_owned(), 0), ("fake".to_owned(), 0)]
    );
    // Every blob overran on the liar and came from the origin.
    assert_eq!(liar_stats.bad_blobs.load(Ordering::Relaxed), blob_count);
    assert_eq!(origin_stats.bad_blobs.load(Ordering::Relaxed), 0);
    assert!(store.verify().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_single_transport_is_retried_five_times_with_backoff_then_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut origin = Fake {
        fail_always: true,
        ..Fake::default()
    };
    let manifest = origin.image(9);
    origin.tags.insert("1.0".into(), manifest);
    let layer = big_layer(&origin);
    let origin = Arc::new(origin);
    let started = std::time::Instant::now();
    let (result, _) = pull(
        &Puller::new(store.clone(), DEFAULT_PULL_LEASE_TTL),
        Arc::clone(&origin),
        "reg.test/app:1.0",
        PullOptions::default(),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), distd_sdk::ErrorKind::Unavailable, "{err}");
    assert_eq!(origin.fetch_count(&layer), 1 + fetch::MAX_RETRIES as usize);
    // 200 + 400 + 800 + 1600 + 3200 ms.
    assert!(started.elapsed() >= Duration::from_millis(6200));
}
