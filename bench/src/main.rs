//! `distd-bench gc-fill SOCKET COUNT`: writes COUNT distinct small blobs with
//! no lease and no image (all collectable), then times a dry-run collection
//! and a real one, and prints the figures as `key=value` lines for run.sh.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use distd_sdk::Client;
use distd_sdk::proto::distd::v1 as pb;

/// Write streams in flight at once.
const CONCURRENCY: u64 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, command, socket, count] = args.as_slice() else {
        bail!("usage: distd-bench gc-fill SOCKET COUNT");
    };
    if command != "gc-fill" {
        bail!("unknown command {command:?}; the only one is gc-fill");
    }
    let count: u64 = count.parse().context("COUNT must be a number")?;
    let client = Client::connect(socket).await?;

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                put_small(&client, i).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    println!("fill_seconds={:.2}", started.elapsed().as_secs_f64());

    let mut store = client.store();
    let started = Instant::now();
    let dry = store
        .collect(pb::CollectRequest { dry_run: true })
        .await?
        .into_inner();
    println!("gc_dry_run_seconds={:.3}", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let real = store
        .collect(pb::CollectRequest { dry_run: false })
        .await?
        .into_inner();
    println!("gc_seconds={:.3}", started.elapsed().as_secs_f64());
    println!("gc_removed={}", real.removed_count);
    if dry.removed_count as u64 != count || real.removed_count as u64 != count {
        bail!(
            "expected {count} collectable blobs, the dry run found {} and the collection removed {}",
            dry.removed_count,
            real.removed_count
        );
    }
    Ok(())
}

/// Writes one 64-byte blob whose content is derived from `i`, in one
/// WRITE+COMMIT request.
async fn put_small(client: &Client, i: u64) -> anyhow::Result<()> {
    let mut data = Vec::with_capacity(64);
    for k in 0..8u64 {
        data.extend_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k).to_le_bytes());
    }
    let request = pb::WriteContentRequest {
        action: pb::WriteAction::Commit as i32,
        r#ref: format!("bench-{i}"),
        offset: 0,
        total: data.len() as i64,
        data: bytes::Bytes::from(data),
        ..Default::default()
    };
    let mut responses = client
        .content()
        .write(tokio_stream::iter([request]))
        .await?
        .into_inner();
    while responses.message().await?.is_some() {}
    Ok(())
}
