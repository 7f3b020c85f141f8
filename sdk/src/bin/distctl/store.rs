//! `distctl lease …`, `gc`, `df`, `verify` and `version`: the store as a whole.

use std::collections::HashMap;

use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Client, ErrorKind};
use serde_json::{Value, json};

use crate::cli::LeaseCmd;
use crate::explain::Explain;
use crate::output::{self, Output};

/// Runs a `lease` subcommand.
pub async fn lease(client: &Client, out: Output, cmd: LeaseCmd) -> anyhow::Result<()> {
    match cmd {
        LeaseCmd::Create { id, expire } => {
            let id = id.unwrap_or_default();
            let lease = client
                .lease_create(&id, expire, HashMap::new())
                .await
                .explain(
                    "creating a lease",
                    &[(
                        ErrorKind::AlreadyExists,
                        "a lease with that --id exists; pick another",
                    )],
                )?;
            out.result(&lease_json(&lease), || vec![lease.id.clone()]);
        }
        LeaseCmd::Ls => {
            let leases = client.lease_list().await.explain("listing leases", &[])?;
            let doc = Value::Array(leases.iter().map(lease_json).collect());
            out.result(&doc, || {
                let rows: Vec<Vec<String>> = leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            output::time(l.created_at.as_ref()),
                            l.expires_at
                                .as_ref()
                                .map_or_else(|| "never".to_owned(), |t| output::time(Some(t))),
                            l.resources.len().to_string(),
                        ]
                    })
                    .collect();
                Output::table(&["ID", "CREATED", "EXPIRES", "RESOURCES"], &rows)
            });
        }
        LeaseCmd::Rm { id } => {
            client.lease_delete(&id).await.explain(
                &format!("removing lease {id:?}"),
                &[(
                    ErrorKind::NotFound,
                    "see `distctl lease ls` for the leases there are",
                )],
            )?;
            out.result(&json!({ "removed": id }), || vec![format!("removed {id}")]);
        }
    }
    Ok(())
}

fn lease_json(l: &pb::Lease) -> Value {
    let resources: Vec<Value> = l
        .resources
        .iter()
        .map(|r| {
            let kind = match pb::LeaseResourceKind::try_from(r.kind) {
                Ok(pb::LeaseResourceKind::Content) => "content",
                Ok(pb::LeaseResourceKind::Ingest) => "ingest",
                _ => "unknown",
            };
            json!({ "kind": kind, "id": r.id })
        })
        .collect();
    json!({
        "id": l.id,
        "created_at": output::time_json(l.created_at.as_ref()),
        "expires_at": output::time_json(l.expires_at.as_ref()),
        "labels": l.labels,
        "resources": resources,
    })
}

/// `distctl gc [--dry-run]`.
pub async fn gc(client: &Client, out: Output, dry_run: bool) -> anyhow::Result<()> {
    let r = client
        .store_collect(dry_run)
        .await
        .explain("collecting garbage", &[])?;
    let doc = json!({
        "dry_run": r.dry_run,
        "removed_count": r.removed_count,
        "removed_bytes": r.removed_bytes,
        "removed_digests": r.removed_digests,
        "removed_ingests": r.removed_ingests,
        "removed_ingest_bytes": r.removed_ingest_bytes,
        "removed_leases": r.removed_leases,
        "duration_ms": r.duration_ms,
    });
    out.result(&doc, || {
        let verb = if r.dry_run { "would remove" } else { "removed" };
        let mut lines = vec![format!(
            "{verb} {} blobs, {} ({} bytes)",
            r.removed_count,
            output::bytes(r.removed_bytes),
            r.removed_bytes
        )];
        if !r.removed_ingests.is_empty() {
            lines.push(format!(
                "{verb} {} expired ingests, {}",
                r.removed_ingests.len(),
                output::bytes(r.removed_ingest_bytes)
            ));
        }
        if !r.removed_leases.is_empty() {
            lines.push(format!("{verb} {} expired leases", r.removed_leases.len()));
        }
        lines
    });
    Ok(())
}

/// `distctl df`.
pub async fn df(client: &Client, out: Output) -> anyhow::Result<()> {
    let u = client
        .store_usage()
        .await
        .explain("reading disk usage", &[])?;
    let doc = json!({
        "blobs": { "count": u.blob_count, "bytes": u.blob_bytes },
        "referenced": { "count": u.referenced_count, "bytes": u.referenced_bytes },
        "reclaimable": { "count": u.reclaimable_count, "bytes": u.reclaimable_bytes },
        "ingests": { "count": u.ingest_count, "bytes": u.ingest_bytes },
        "filesystem": { "bytes": u.filesystem_bytes, "free_bytes": u.filesystem_free_bytes },
    });
    out.result(&doc, || {
        let row = |what: &str, count: i64, bytes: i64| {
            vec![what.to_owned(), count.to_string(), output::bytes(bytes)]
        };
        let mut lines = Output::table(
            &["", "COUNT", "SIZE"],
            &[
                row("used", u.blob_count, u.blob_bytes),
                row("referenced", u.referenced_count, u.referenced_bytes),
                row("reclaimable", u.reclaimable_count, u.reclaimable_bytes),
                row("ingests", u.ingest_count, u.ingest_bytes),
            ],
        );
        lines.push(format!(
            "filesystem: {} free of {}",
            output::bytes(u.filesystem_free_bytes),
            output::bytes(u.filesystem_bytes)
        ));
        lines
    });
    Ok(())
}

/// `distctl verify`: the exit status is 1 when problems were found.
pub async fn verify(client: &Client, out: Output) -> anyhow::Result<u8> {
    let r = client
        .store_verify()
        .await
        .explain("verifying the store", &[])?;
    let kind_name = |k: i32| match pb::verify_problem::Kind::try_from(k) {
        Ok(pb::verify_problem::Kind::Missing) => "missing",
        Ok(pb::verify_problem::Kind::Corrupt) => "corrupt",
        Ok(pb::verify_problem::Kind::Orphan) => "orphan",
        _ => "unknown",
    };
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| json!({ "kind": kind_name(p.kind), "digest": p.digest, "detail": p.detail }))
        .collect();
    let doc = json!({
        "checked_count": r.checked_count,
        "checked_bytes": r.checked_bytes,
        "problems": problems,
    });
    out.result(&doc, || {
        let mut lines = vec![format!(
            "checked {} blobs, {}: {} problems",
            r.checked_count,
            output::bytes(r.checked_bytes),
            r.problems.len()
        )];
        lines.extend(
            r.problems
                .iter()
                .map(|p| format!("{:<8} {}  {}", kind_name(p.kind), p.digest, p.detail)),
        );
        lines
    });
    Ok(u8::from(!r.problems.is_empty()))
}

/// `distctl version`.
pub async fn version(client: &Client, out: Output) -> anyhow::Result<()> {
    let v = client
        .version()
        .await
        .explain("asking distd its version", &[])?;
    let client_version = env!("CARGO_PKG_VERSION");
    let doc = json!({
        "client": { "version": client_version },
        "daemon": { "version": v.version, "api": v.api },
    });
    out.result(&doc, || {
        vec![
            format!("distctl {client_version}"),
            format!("distd   {} (api {})", v.version, v.api),
        ]
    });
    Ok(())
}
