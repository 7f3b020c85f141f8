//! `distctl images …`: image names.

use distd_sdk::proto::distd::v1 as pb;
use distd_sdk::{Client, ErrorKind};
use serde_json::{Value, json};

use crate::cli::ImagesCmd;
use crate::explain::Explain;
use crate::output::{self, Output};

/// Runs an `images` subcommand.
pub async fn run(client: &Client, out: Output, cmd: ImagesCmd) -> anyhow::Result<()> {
    let no_image = "see `distctl images ls` for the images there are";
    match cmd {
        ImagesCmd::Ls => {
            let images = client.image_list("").await.explain("listing images", &[])?;
            let doc = Value::Array(images.iter().map(image_json).collect());
            out.result(&doc, || {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        let target = i.target.clone().unwrap_or_default();
                        vec![
                            i.name.clone(),
                            target.digest,
                            output::bytes(target.size),
                            target.media_type,
                        ]
                    })
                    .collect();
                Output::table(&["NAME", "DIGEST", "SIZE", "MEDIA TYPE"], &rows)
            });
        }
        ImagesCmd::Rm { name } => {
            client.image_delete(&name).await.explain(
                &format!("removing image {name:?}"),
                &[(ErrorKind::NotFound, no_image)],
            )?;
            out.result(&json!({ "removed": name }), || {
                vec![format!("removed {name}")]
            });
        }
        ImagesCmd::Tag { src, dst } => {
            let image = client.image_tag(&src, &dst).await.explain(
                &format!("tagging image {src:?} as {dst:?}"),
                &[
                    (ErrorKind::NotFound, no_image),
                    (
                        ErrorKind::InvalidArgument,
                        "write the new name as a reference, e.g. registry.example.com/app:1.0",
                    ),
                ],
            )?;
            out.result(&image_json(&image), || vec![format!("{src} → {dst}")]);
        }
    }
    Ok(())
}

/// JSON of an image record.
pub fn image_json(i: &pb::Image) -> Value {
    let target = i.target.as_ref().map(descriptor_json);
    json!({
        "name": i.name,
        "target": target,
        "labels": i.labels,
        "created_at": output::time_json(i.times.as_ref().and_then(|t| t.created_at.as_ref())),
        "updated_at": output::time_json(i.times.as_ref().and_then(|t| t.updated_at.as_ref())),
    })
}

/// JSON of a descriptor, in the OCI spelling.
pub fn descriptor_json(d: &pb::Descriptor) -> Value {
    let mut v = json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size });
    if !d.annotations.is_empty()
        && let Some(map) = v.as_object_mut()
    {
        map.insert("annotations".into(), json!(d.annotations));
    }
    v
}
