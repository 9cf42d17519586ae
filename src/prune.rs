//! `imgforge prune`: retires all but the newest images of a name, never one still in use.
//!
//! An image is kept when it is among the newest `--keep`, younger than `--min-age`, or used by
//! a pending, running, stopping or stopped instance, by the default or latest version of a
//! launch template, or by an Auto Scaling group (launch configuration, launch template, mixed
//! instances policy). The others are deregistered and their snapshots deleted.

use crate::cloud::{
    self, describe_instances, format_age, summary, tag, tags, ApiCalls, Clients, CloudOptions,
};
use crate::events::{payload, table, Reporter};
use anyhow::{bail, Context, Result};
use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::{Filter, Image};
use futures::{stream, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// Per-template lookups and deletions in flight at once.
const CONCURRENCY: usize = 8;
/// Values per `image-id` filter, and names per DescribeLaunchConfigurations call.
const BATCH: usize = 50;

/// What `imgforge prune` is asked to do.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Image name to prune (images tagged `imgforge:image=NAME`).
    pub image_name: String,
    /// How many of the newest images to keep.
    pub keep: usize,
    /// Only remove images older than this.
    pub min_age: Option<Duration>,
    /// List what would go and why each kept image is kept; change nothing.
    pub dry_run: bool,
    /// Disable the images (DisableImage: not launchable, listed only on request, snapshots
    /// kept, can be enabled again) instead of deregistering them.
    pub disable: bool,
    /// Instances per DescribeInstances page (5 to 1000).
    pub page_size: i32,
    /// Cloud connection.
    pub cloud: CloudOptions,
}

/// Why images are kept: image id → reasons.
type Reasons = BTreeMap<String, Vec<String>>;

/// Runs `imgforge prune`.
pub async fn run(args: PruneOptions, reporter: &Reporter) -> Result<()> {
    if !(5..=1000).contains(&args.page_size) {
        bail!("the page size must be between 5 and 1000");
    }
    let calls = ApiCalls::default();
    let clients = calls.clients(&cloud::load(&args.cloud).await?, args.page_size);
    reporter.phase("find images and their users");
    let mut images = images_of(&clients, &args.image_name).await?;
    images.sort_by_key(|i| {
        std::cmp::Reverse((
            i.creation_date().map(str::to_string),
            tag(i.tags(), tags::BUILD_ID).map(str::to_string),
        ))
    });
    let reasons = reasons_to_keep(&clients, &images, &args).await?;
    reporter.finish();

    let doomed: Vec<&Image> = images
        .iter()
        .filter(|i| i.image_id().is_some_and(|id| !reasons.contains_key(id)))
        .collect();
    report(reporter, &images, &reasons, args.dry_run);
    if args.dry_run || doomed.is_empty() {
        let message = if doomed.is_empty() {
            format!(
                "nothing to prune: all {} image(s) of {} are kept",
                images.len(),
                args.image_name
            )
        } else {
            format!(
                "dry run: {} of {} image(s) would go",
                doomed.len(),
                images.len()
            )
        };
        summary(
            reporter,
            &calls,
            &message,
            payload::Summary {
                removed: Some(0),
                dry_run: Some(args.dry_run),
                ..Default::default()
            },
        );
        return Ok(());
    }
    remove_all(&clients, &calls, doomed, args.disable, reporter).await
}

/// Why each image is kept: the newest `--keep`, those younger than `--min-age`, and those an
/// instance, a launch template or an Auto Scaling group uses.
async fn reasons_to_keep(
    clients: &Clients,
    images: &[Image],
    args: &PruneOptions,
) -> Result<Reasons> {
    let ids: Vec<String> = images
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    let mut reasons = Reasons::new();
    for id in ids.iter().take(args.keep) {
        keep(&mut reasons, id, format!("among the newest {}", args.keep));
    }
    if let Some(min_age) = args.min_age {
        let now = SystemTime::now();
        for image in images {
            let created = image
                .creation_date()
                .and_then(|d| {
                    time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(SystemTime::from);
            let young = created.is_none_or(|c| now.duration_since(c).unwrap_or_default() < min_age);
            if young {
                keep(
                    &mut reasons,
                    image.image_id().unwrap_or(""),
                    format!("younger than {}", format_age(min_age)),
                );
            }
        }
    }
    let candidates: Vec<String> = ids
        .iter()
        .filter(|id| !reasons.contains_key(*id))
        .cloned()
        .collect();
    if !candidates.is_empty() {
        used_by_instances(clients, &candidates, &mut reasons).await?;
        used_by_templates(clients, &candidates, &mut reasons).await?;
        used_by_groups(clients, &candidates, &mut reasons).await?;
    }
    Ok(reasons)
}

/// Deregisters `doomed` and deletes their snapshots (or, with `disable`, disables them),
/// reporting each; fails naming the first image that could not be removed (the others are
/// still removed).
async fn remove_all(
    clients: &Clients,
    calls: &ApiCalls,
    doomed: Vec<&Image>,
    disable: bool,
    reporter: &Reporter,
) -> Result<()> {
    reporter.phase(if disable { "disable" } else { "deregister" });
    let results: Vec<(String, Result<Vec<String>>)> = stream::iter(doomed)
        .map(|image| async {
            let id = image.image_id().unwrap_or("").to_string();
            let result = match disable {
                true => disable_image(clients, image).await.map(|()| Vec::new()),
                false => remove(clients, image).await,
            };
            (id, result)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    reporter.finish();
    let mut failures = Vec::new();
    let mut removed = 0;
    for (id, result) in results {
        match result {
            Ok(snapshots) => {
                removed += 1;
                let message = match disable {
                    true => format!("disabled {id} (its snapshots are kept)"),
                    false => format!(
                        "deregistered {id}, deleted snapshot(s) {}",
                        snapshots.join(", ")
                    ),
                };
                reporter.emit(
                    &message,
                    &payload::Removed {
                        image: id.to_string(),
                        snapshots: snapshots.clone(),
                        disabled: disable,
                    },
                );
            }
            Err(e) => {
                let msg = format!("{id}: {e:#}");
                reporter.emit(
                    &msg,
                    &payload::Failed {
                        image: Some(id.to_string()),
                        reason: format!("{e:#}"),
                        ..Default::default()
                    },
                );
                failures.push(msg);
            }
        }
    }
    summary(
        reporter,
        calls,
        &format!("removed {removed}, failed {}", failures.len()),
        payload::Summary {
            removed: Some(removed),
            failed: Some(failures.len()),
            ..Default::default()
        },
    );
    if let Some(first) = failures.first() {
        bail!(
            "{} image(s) could not be pruned, first: {first}; run imgforge prune again once \
             fixed",
            failures.len()
        );
    }
    Ok(())
}

fn keep(reasons: &mut Reasons, id: &str, reason: String) {
    reasons.entry(id.to_string()).or_default().push(reason);
}

fn filter(name: &str, values: Vec<String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}

/// Every image of ours tagged `imgforge:image=name` (all pages).
async fn images_of(clients: &Clients, name: &str) -> Result<Vec<Image>> {
    clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(filter(
            &format!("tag:{}", tags::IMAGE),
            vec![name.to_string()],
        ))
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .with_context(|| format!("DescribeImages for image name {name} failed"))
}

/// Marks candidates used by pending, running, stopping or stopped instances.
async fn used_by_instances(
    clients: &Clients,
    candidates: &[String],
    reasons: &mut Reasons,
) -> Result<()> {
    let found = cloud::in_chunks(candidates, BATCH, |chunk| {
        describe_instances(
            clients,
            vec![
                filter("image-id", chunk),
                filter(
                    "instance-state-name",
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ),
            ],
        )
    })
    .await?;
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in found {
        if let (Some(image), Some(id)) = (i.image_id(), i.instance_id()) {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str())
                .unwrap_or("?");
            users
                .entry(image.to_string())
                .or_default()
                .push(format!("{id} ({state})"));
        }
    }
    for (image, instances) in users {
        let shown: Vec<_> = instances.iter().take(3).cloned().collect();
        let more = instances.len().saturating_sub(3);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        keep(
            reasons,
            &image,
            format!("used by instance {}{tail}", shown.join(", ")),
        );
    }
    Ok(())
}

/// Image ids of launch template versions: (template id or name, version) → image.
async fn template_images(
    clients: &Clients,
    template: &LaunchTemplateRef,
    versions: &[String],
) -> Result<Vec<(String, Option<String>)>> {
    let req = clients
        .ec2
        .describe_launch_template_versions()
        .set_versions(Some(versions.to_vec()));
    let req = match template {
        LaunchTemplateRef::Id(id) => req.launch_template_id(id),
        LaunchTemplateRef::Name(name) => req.launch_template_name(name),
    };
    let out = req.send().await.with_context(|| {
        format!(
            "cannot read versions {} of launch template {template}",
            versions.join(", ")
        )
    })?;
    Ok(out
        .launch_template_versions()
        .iter()
        .map(|v| {
            let label = match (v.default_version(), v.version_number()) {
                (Some(true), Some(n)) => format!("default version {n}"),
                (_, Some(n)) => format!("version {n}"),
                _ => "a version".into(),
            };
            (
                label,
                v.launch_template_data()
                    .and_then(|d| d.image_id())
                    .map(str::to_string),
            )
        })
        .collect())
}

/// A launch template, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LaunchTemplateRef {
    Id(String),
    Name(String),
}

impl std::fmt::Display for LaunchTemplateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchTemplateRef::Id(s) | LaunchTemplateRef::Name(s) => f.write_str(s),
        }
    }
}

/// Marks candidates used by the default or latest version of any launch template.
async fn used_by_templates(
    clients: &Clients,
    candidates: &[String],
    reasons: &mut Reasons,
) -> Result<()> {
    let templates: Vec<_> = clients
        .ec2
        .describe_launch_templates()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .context("DescribeLaunchTemplates failed")?;
    let versions = ["$Default".to_string(), "$Latest".to_string()];
    let found: Vec<_> = stream::iter(templates.iter().filter_map(|t| {
        Some((
            t.launch_template_id()?.to_string(),
            t.launch_template_name().unwrap_or("").to_string(),
        ))
    }))
    .map(|(id, name)| {
        let versions = &versions;
        async move {
            let images =
                template_images(clients, &LaunchTemplateRef::Id(id.clone()), versions).await;
            (id, name, images)
        }
    })
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    for (id, name, images) in found {
        for (label, image) in images? {
            let Some(image) = image.filter(|i| candidates.contains(i)) else {
                continue;
            };
            keep(
                reasons,
                &image,
                format!("{label} of launch template {name} ({id})"),
            );
        }
    }
    Ok(())
}

fn spec_ref(spec: &LaunchTemplateSpecification) -> Option<(LaunchTemplateRef, String)> {
    let template = match (spec.launch_template_id(), spec.launch_template_name()) {
        (Some(id), _) => LaunchTemplateRef::Id(id.to_string()),
        (None, Some(name)) => LaunchTemplateRef::Name(name.to_string()),
        (None, None) => return None,
    };
    Some((template, spec.version().unwrap_or("$Default").to_string()))
}

/// Names of the Auto Scaling groups that launch from each source.
type GroupsBy<K> = BTreeMap<K, BTreeSet<String>>;

/// Groups by launch configuration name, and by launch template and version, that launch from
/// them (directly or through a mixed instances policy).
fn launch_sources(
    groups: &[aws_sdk_autoscaling::types::AutoScalingGroup],
) -> (GroupsBy<String>, GroupsBy<(LaunchTemplateRef, String)>) {
    let mut by_config: GroupsBy<String> = BTreeMap::new();
    let mut by_template: GroupsBy<(LaunchTemplateRef, String)> = BTreeMap::new();
    for g in groups {
        let name = g.auto_scaling_group_name().unwrap_or("").to_string();
        if let Some(lc) = g.launch_configuration_name() {
            by_config
                .entry(lc.to_string())
                .or_default()
                .insert(name.clone());
        }
        let specs = g.launch_template().into_iter().chain(
            g.mixed_instances_policy()
                .and_then(|p| p.launch_template())
                .and_then(|t| t.launch_template_specification()),
        );
        for spec in specs {
            if let Some(key) = spec_ref(spec) {
                by_template.entry(key).or_default().insert(name.clone());
            }
        }
    }
    (by_config, by_template)
}

/// Marks candidates used by Auto Scaling groups, through launch configurations or launch
/// templates (also inside mixed instances policies).
async fn used_by_groups(
    clients: &Clients,
    candidates: &[String],
    reasons: &mut Reasons,
) -> Result<()> {
    let groups: Vec<_> = clients
        .asg
        .describe_auto_scaling_groups()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .context("DescribeAutoScalingGroups failed")?;
    let (by_config, by_template) = launch_sources(&groups);
    let names: Vec<String> = by_config.keys().cloned().collect();
    let configs = cloud::in_chunks(&names, BATCH, |chunk| async move {
        clients
            .asg
            .describe_launch_configurations()
            .set_launch_configuration_names(Some(chunk))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context("DescribeLaunchConfigurations failed")
    })
    .await?;
    for c in configs {
        let (Some(image), Some(lc)) = (c.image_id(), c.launch_configuration_name()) else {
            continue;
        };
        if !candidates.iter().any(|i| i == image) {
            continue;
        }
        for group in &by_config[lc] {
            keep(
                reasons,
                image,
                format!("used by auto scaling group {group} (launch configuration {lc})"),
            );
        }
    }
    let found: Vec<_> = stream::iter(by_template.iter())
        .map(|((template, version), groups)| async move {
            let images = template_images(clients, template, std::slice::from_ref(version)).await;
            (template, groups, images)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (template, groups, images) in found {
        for (label, image) in images? {
            let Some(image) = image.filter(|i| candidates.contains(i)) else {
                continue;
            };
            for group in groups {
                keep(reasons, &image, format!("used by auto scaling group {group} ({label} of launch template {template})"));
            }
        }
    }
    Ok(())
}

/// Disables `image`: it can no longer be launched, and can be enabled again.
async fn disable_image(clients: &Clients, image: &Image) -> Result<()> {
    let id = image.image_id().context("image without an id")?;
    clients
        .ec2
        .disable_image()
        .image_id(id)
        .send()
        .await
        .map_err(|e| cloud::sdk_error(e, &format!("DisableImage {id}")))?;
    Ok(())
}

/// Deregisters `image` and deletes its snapshots; returns the snapshot ids.
async fn remove(clients: &Clients, image: &Image) -> Result<Vec<String>> {
    let id = image.image_id().context("image without an id")?;
    clients
        .ec2
        .deregister_image()
        .image_id(id)
        .send()
        .await
        .with_context(|| format!("DeregisterImage {id} failed"))?;
    let snapshots: Vec<String> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect();
    for snapshot in &snapshots {
        clients
            .ec2
            .delete_snapshot()
            .snapshot_id(snapshot)
            .send()
            .await
            .with_context(|| {
                format!(
                    "deregistered {id} but DeleteSnapshot {snapshot} failed (another image may \
                     use it): delete it by hand once unused"
                )
            })?;
    }
    Ok(snapshots)
}

/// Lists every image with its fate: a table for people, one `keep`/`remove` event each in JSON.
fn report(reporter: &Reporter, images: &[Image], reasons: &Reasons, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "remove" };
    let mut rows = Vec::new();
    for image in images {
        let id = image.image_id().unwrap_or("?");
        let created = image.creation_date().unwrap_or("?");
        let build = tag(image.tags(), tags::BUILD_ID).unwrap_or("-");
        let snapshots: Vec<&str> = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
            .collect();
        let action = match reasons.get(id) {
            Some(r) => format!("keep: {}", r.join("; ")),
            None => format!("{verb} (snapshots {})", snapshots.join(", ")),
        };
        if reporter.is_json() {
            let message = format!("{id}: {action}");
            let (image, created, build_id) = (id.to_string(), created.to_string(), build.into());
            match reasons.get(id) {
                Some(r) => reporter.emit(
                    &message,
                    &payload::Keep {
                        image,
                        created,
                        build_id,
                        reasons: r.clone(),
                    },
                ),
                None => reporter.emit(
                    &message,
                    &payload::Remove {
                        image,
                        created,
                        build_id,
                        snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
                        dry_run,
                    },
                ),
            }
        }
        rows.push([
            id.to_string(),
            created.to_string(),
            build.to_string(),
            action,
        ]);
    }
    if !reporter.is_json() {
        println!("{}", table(["IMAGE", "CREATED", "BUILD", "ACTION"], &rows));
    }
}
