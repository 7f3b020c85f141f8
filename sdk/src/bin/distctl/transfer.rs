//! `distctl pull`, `push` and `copy`: ask distd to move an image and show
//! the transfer's events — a bar per blob and a total on a terminal
//! (stderr), plain lines on stdout otherwise, one JSON object per event with
//! `--json`. Errors stay one line on stderr.

use std::collections::HashMap;
use std::io::IsTerminal;

use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Client, ClientError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pb::transfer_event::Event;
use serde_json::json;

use crate::cli::{CopyArgs, PullArgs, PushArgs};
use crate::explain::explain_remote;
use crate::output::{self, Output};

const BAR: &str = "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// Where events are shown.
enum View {
    Json,
    Lines,
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
        blobs: HashMap<String, (ProgressBar, u64)>,
    },
}

/// Runs `distctl pull`.
pub async fn pull(client: &Client, out: Output, args: PullArgs) -> anyhow::Result<()> {
    let request = pb::PullRequest {
        reference: args.reference.clone(),
        platform: args.platform.unwrap_or_default(),
        all_platforms: args.all_platforms,
    };
    let action = format!("pulling {}", args.reference);
    let events = client
        .transfer()
        .pull(request)
        .await
        .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
        .into_inner();
    let done = follow(out, &action, events).await?;
    if !out.is_json() {
        let target = done.target.unwrap_or_default();
        println!(
            "{}@{} ({})",
            done.name,
            target.digest,
            output::bytes(target.size)
        );
        println!("{}", by_transport(&done.bytes_by_transport));
    }
    Ok(())
}

/// "12.0 MiB from oci-dir, 3.0 MiB from registry", most first.
fn by_transport(bytes: &HashMap<String, i64>) -> String {
    if bytes.is_empty() {
        return "nothing transferred: every blob was in the store".to_owned();
    }
    let mut counts: Vec<(&String, &i64)> = bytes.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(transport, n)| format!("{} from {transport}", output::bytes(**n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `distctl push`.
pub async fn push(client: &Client, out: Output, args: PushArgs) -> anyhow::Result<()> {
    let source = args.from.clone().unwrap_or_else(|| args.reference.clone());
    let done = push_image(client, out, &source, &args.reference, args.platform).await?;
    let (name, target) = (done.name, done.target.unwrap_or_default());
    if !out.is_json() {
        println!(
            "pushed {name}@{} ({})",
            target.digest,
            output::bytes(target.size)
        );
    }
    Ok(())
}

/// Runs `distctl copy SRC DST`: a pull of SRC into the store, then a push of
/// it to DST, so every digest is kept.
pub async fn copy(client: &Client, out: Output, args: CopyArgs) -> anyhow::Result<()> {
    let action = format!("copying {} (pulling it)", args.source);
    let events = client
        .transfer()
        .pull(pb::PullRequest {
            reference: args.source.clone(),
            platform: args.platform.clone().unwrap_or_default(),
            all_platforms: args.platform.is_none(),
        })
        .await
        .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
        .into_inner();
    let local = follow(out, &action, events).await?.name;
    let done = push_image(client, out, &local, &args.destination, args.platform).await?;
    let (name, target) = (done.name, done.target.unwrap_or_default());
    if !out.is_json() {
        println!(
            "copied {} to {name}@{} ({})",
            args.source,
            target.digest,
            output::bytes(target.size)
        );
    }
    Ok(())
}

async fn push_image(
    client: &Client,
    out: Output,
    source: &str,
    target: &str,
    platform: Option<String>,
) -> anyhow::Result<pb::transfer_event::Done> {
    let action = format!("pushing {source} to {target}");
    if source.is_empty() || target.is_empty() {
        anyhow::bail!("{action}: name the image to push, e.g. registry.example.com/team/app:1.0");
    }
    let events = client
        .transfer()
        .push(pb::PushRequest {
            source: source.to_owned(),
            target: target.to_owned(),
            platform: platform.unwrap_or_default(),
        })
        .await
        .map_err(|e| explain_remote(ClientError::from(e), &action, &[]))?
        .into_inner();
    follow(out, &action, events).await
}

/// Shows a transfer's events until its end; returns its `done` event.
async fn follow(
    out: Output,
    action: &str,
    mut events: tonic::Streaming<pb::TransferEvent>,
) -> anyhow::Result<pb::transfer_event::Done> {
    // distd's messages say what to do (log in, pick a platform, …).
    let fail = |e: tonic::Status| explain_remote(ClientError::from(e), action, &[]);
    let mut view = if out.is_json() {
        View::Json
    } else if std::io::stderr().is_terminal() {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        if let Ok(style) = ProgressStyle::with_template(BAR) {
            total.set_style(style.progress_chars("=> "));
        }
        total.set_message("total");
        View::Bars {
            multi,
            total,
            blobs: HashMap::new(),
        }
    } else {
        View::Lines
    };
    let mut done = None;
    while let Some(event) = events.message().await.map_err(fail)? {
        let Some(event) = event.event else { continue };
        if let Event::Done(d) = &event {
            done = Some(d.clone());
        }
        show(&mut view, &event);
    }
    if let View::Bars { multi, total, .. } = &view {
        total.finish_and_clear();
        let _ = multi.clear();
    }
    let Some(done) = done else {
        anyhow::bail!("{action}: distd ended the transfer without saying it was done");
    };
    Ok(done)
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn show(view: &mut View, event: &Event) {
    match view {
        View::Json => println!("{}", event_json(event)),
        View::Lines => match event {
            Event::Resolved(r) => {
                let target = r.target.clone().unwrap_or_default();
                println!(
                    "resolved {} ({}) via {}",
                    target.digest, target.media_type, r.transport
                );
            }
            Event::BlobStarted(b) if b.resume_offset > 0 => {
                println!(
                    "{} resuming at {} of {} via {}",
                    short(&b.digest),
                    b.resume_offset,
                    b.size,
                    b.transport
                );
            }
            Event::BlobDone(b) => println!(
                "{} done via {} ({} transferred)",
                short(&b.digest),
                b.transport,
                output::bytes(b.transferred)
            ),
            Event::Mounted(m) => println!("{} mounted from {}", short(&m.digest), m.from),
            Event::Skipped(s) => println!("{} skipped: {}", short(&s.digest), s.reason),
            Event::Warning(w) => output::warn(w),
            _ => {}
        },
        View::Bars {
            multi,
            total,
            blobs,
        } => match event {
            Event::BlobStarted(b) if blobs.contains_key(&b.digest) => {
                // A retry, or a hand-over to the next transport: same bar.
                if let Some((bar, seen)) = blobs.get_mut(&b.digest) {
                    let start = u64::try_from(b.resume_offset).unwrap_or(0);
                    let position = total.position();
                    total.set_position((position + start).saturating_sub(*seen));
                    *seen = start;
                    bar.set_position(start);
                }
            }
            Event::BlobStarted(b) => {
                let size = u64::try_from(b.size).unwrap_or(0);
                let bar = multi.add(ProgressBar::new(size));
                if let Ok(style) = ProgressStyle::with_template(BAR) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(short(&b.digest).to_owned());
                let start = u64::try_from(b.resume_offset).unwrap_or(0);
                bar.set_position(start);
                total.inc_length(size);
                total.inc(start);
                blobs.insert(b.digest.clone(), (bar, start));
            }
            Event::Progress(p) => {
                if let Some((bar, seen)) = blobs.get_mut(&p.digest) {
                    let now = u64::try_from(p.bytes).unwrap_or(0);
                    total.inc(now.saturating_sub(*seen));
                    *seen = now;
                    bar.set_position(now);
                }
            }
            Event::BlobDone(b) => {
                if let Some((bar, _)) = blobs.remove(&b.digest) {
                    bar.finish_and_clear();
                }
            }
            Event::Warning(w) => {
                let _ = multi.println(format!("warning: {w}"));
            }
            _ => {}
        },
    }
}

fn event_json(event: &Event) -> serde_json::Value {
    let descriptor = |d: &Option<pb::Descriptor>| {
        let d = d.clone().unwrap_or_default();
        json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size })
    };
    match event {
        Event::Resolved(r) => {
            json!({ "event": "resolved", "target": descriptor(&r.target), "transport": r.transport })
        }
        Event::BlobStarted(b) => {
            json!({ "event": "blob_started", "digest": b.digest, "size": b.size, "transport": b.transport, "resume_offset": b.resume_offset })
        }
        Event::Progress(p) => json!({ "event": "progress", "digest": p.digest, "bytes": p.bytes }),
        Event::BlobDone(b) => {
            json!({ "event": "blob_done", "digest": b.digest, "transport": b.transport, "transferred": b.transferred })
        }
        Event::Mounted(m) => json!({ "event": "mounted", "digest": m.digest, "from": m.from }),
        Event::Skipped(s) => json!({ "event": "skipped", "digest": s.digest, "reason": s.reason }),
        Event::Warning(w) => json!({ "event": "warning", "message": w }),
        Event::Done(d) => {
            json!({ "event": "done", "name": d.name, "target": descriptor(&d.target), "bytes_by_transport": d.bytes_by_transport })
        }
    }
}
