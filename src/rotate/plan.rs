//! Step 1 of a rotation: select the managed instances, find the target image of each image name,
//! and decide an action per instance.
//!
//! Uses: the selection flags and the clock. Produces: a [`Plan`], which changes nothing.

use crate::cloud::registration::Statement;
use crate::cloud::tags;
use crate::cloud::{self, describe_instances, format_age, tag, Clients};
use crate::events::table;
use crate::events::{payload, Reporter};
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::{BlockDeviceMapping, Filter, Image, Instance};
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

/// How many per-instance calls (termination-protection lookups) run at once.
const CONCURRENCY: usize = 8;
/// Instance ids per DescribeAutoScalingInstances call (the API's maximum).
const ASG_BATCH: usize = 50;

/// What the user asked to rotate.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Instances tagged `imgforge:image=NAME`; without it, any instance with that tag key.
    pub image_name: Option<String>,
    /// An explicit target image id.
    pub image: Option<String>,
    /// Extra EC2 filters.
    pub filters: Vec<Filter>,
    /// Instances older than this are replaced.
    pub max_age: Option<Duration>,
    /// Instances not on the newest image of their name are replaced, whatever their age.
    pub superseded: bool,
    /// Floor on healthy managed instances, in percent.
    pub min_healthy_percent: u32,
}

/// The image replacements are launched from.
#[derive(Debug, Clone)]
pub struct Target {
    /// Image id.
    pub image_id: String,
    /// Its `imgforge:build-id` tag, if any.
    pub build_id: Option<String>,
    /// Its creation date (RFC 3339).
    pub created: Option<String>,
    /// Its tags, where its signed registration is (see `cloud::registration`).
    pub tags: Vec<aws_sdk_ec2::types::Tag>,
    /// Its block device mappings (root volume size and snapshot).
    pub block_devices: Vec<BlockDeviceMapping>,
}

/// What happens to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Left alone.
    Keep {
        /// Why.
        reason: String,
    },
    /// Old, but exempt; reported.
    Skip {
        /// Why.
        reason: String,
    },
    /// Replaced by a new instance of the target image.
    Replace,
    /// A replacement from an earlier run exists: wait for it, then terminate this one.
    Resume {
        /// The replacement's id.
        replacement: String,
    },
    /// Member of an Auto Scaling group: rotated through the group.
    AutoScaling {
        /// The group's name.
        group: String,
    },
}

/// One managed instance and its action.
#[derive(Debug, Clone)]
pub struct Item {
    /// The instance as DescribeInstances returned it.
    pub instance: Instance,
    /// Its id.
    pub id: String,
    /// Its `imgforge:image` tag.
    pub image_name: String,
    /// Time since launch.
    pub age: Duration,
    /// What happens to it.
    pub action: Action,
}

/// The plan of a rotation.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every running managed instance, oldest first.
    pub items: Vec<Item>,
    /// Target image by image name.
    pub targets: BTreeMap<String, Target>,
    /// The fewest healthy managed instances allowed at any time.
    pub floor: usize,
    /// Managed instances whose status checks are not impaired.
    pub healthy: usize,
    /// The age limit.
    pub max_age: Option<Duration>,
    /// Whether instances on a superseded image are replaced too.
    pub superseded: bool,
}

impl Plan {
    /// Whether nothing would change.
    pub fn is_noop(&self) -> bool {
        self.items
            .iter()
            .all(|i| matches!(i.action, Action::Keep { .. } | Action::Skip { .. }))
    }

    /// Whether some instance is rotated through an Auto Scaling group.
    pub fn has_asg_work(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.action, Action::AutoScaling { .. }))
    }

    /// How many old instances are exempt.
    pub fn skipped(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Skip { .. }))
            .count()
    }

    /// The target image for `item`.
    pub fn target(&self, item: &Item) -> Option<&Target> {
        self.targets.get(&item.image_name)
    }

    /// Prints the plan: a table for people (stdout), a `plan` event and one `skip` event per
    /// exempt instance in JSON mode.
    pub fn report(&self, reporter: &Reporter) {
        let rows: Vec<[String; 4]> = self
            .items
            .iter()
            .map(|i| {
                [
                    i.id.clone(),
                    format_age(i.age),
                    i.instance.image_id().unwrap_or("-").to_string(),
                    self.describe_action(i),
                ]
            })
            .collect();
        if reporter.is_json() {
            let items: Vec<_> = self
                .items
                .iter()
                .zip(&rows)
                .map(|(i, row)| {
                    json!({
                        "instance": i.id,
                        "age_s": i.age.as_secs(),
                        "image": i.instance.image_id(),
                        "image_name": i.image_name,
                        "target": self.target(i).map(|t| &t.image_id),
                        "target_build_id": self.target(i).and_then(|t| t.build_id.as_ref()),
                        "target_created": self.target(i).and_then(|t| t.created.as_ref()),
                        "action": action_kind(&i.action),
                        "detail": row[3],
                    })
                })
                .collect();
            reporter.emit(
                &format!("{} managed instance(s)", self.items.len()),
                &payload::Plan {
                    instances: items,
                    floor: self.floor,
                    healthy: self.healthy,
                    max_age_s: self.max_age.map(|a| a.as_secs()),
                    superseded: self.superseded,
                },
            );
        } else {
            reporter.finish();
            println!("{}", table(["INSTANCE", "AGE", "IMAGE", "ACTION"], &rows));
            println!(
                "{} managed instance(s), {} healthy, floor {}, {}",
                self.items.len(),
                self.healthy,
                self.floor,
                rule(self.max_age, self.superseded)
            );
        }
        for i in &self.items {
            if let Action::Skip { reason } = &i.action {
                reporter.emit(
                    &format!("skipped {}: {reason}", i.id),
                    &payload::Skip {
                        instance: i.id.clone(),
                        reason: reason.to_string(),
                    },
                );
            }
        }
    }

    /// Refuses the plan, before anything is launched or terminated, unless every image a
    /// replacement would launch carries a signed registration that checks out against
    /// `allowed` and names that image: the target of each instance replaced directly, and the
    /// launch template's image of each Auto Scaling group rotated.
    pub async fn check_signed(&self, clients: &Clients, allowed: &std::path::Path) -> Result<()> {
        let mut checked = BTreeSet::new();
        for item in &self.items {
            let image = match &item.action {
                Action::Replace | Action::Resume { .. } => match self.target(item) {
                    Some(t) => (t.image_id.clone(), t.tags.clone()),
                    None => continue,
                },
                Action::AutoScaling { group } => {
                    let id = super::asg::launch_image(clients, group).await?;
                    let tags = cloud::image_tags(&clients.ec2, &id).await?;
                    (id, tags)
                }
                Action::Keep { .. } | Action::Skip { .. } => continue,
            };
            if checked.insert(image.0.clone()) {
                Statement::verify(&image.0, &image.1, allowed).with_context(|| {
                    format!(
                        "nothing launched, nothing terminated: image {} would replace {}",
                        image.0, item.id
                    )
                })?;
            }
        }
        Ok(())
    }

    fn describe_action(&self, item: &Item) -> String {
        let target = self
            .target(item)
            .map(|t| t.image_id.as_str())
            .unwrap_or("?");
        match &item.action {
            Action::Keep { reason } => format!("keep: {reason}"),
            Action::Skip { reason } => format!("skip: {reason}"),
            Action::Replace => format!("replace from {target}"),
            Action::Resume { replacement } => {
                format!("resume: wait for replacement {replacement}, then terminate")
            }
            Action::AutoScaling { group } => format!("replace through auto scaling group {group}"),
        }
    }
}

fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::Keep { .. } => "keep",
        Action::Skip { .. } => "skip",
        Action::Replace => "replace",
        Action::Resume { .. } => "resume",
        Action::AutoScaling { .. } => "auto-scaling",
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// Replacements launched by earlier runs that are still pending or running: old id → new id.
pub async fn replacements(clients: &Clients) -> Result<HashMap<String, String>> {
    let found = describe_instances(
        clients,
        vec![
            filter("tag-key", &[tags::REPLACES]),
            filter("instance-state-name", &["pending", "running"]),
        ],
    )
    .await?;
    Ok(found
        .iter()
        .filter_map(|i| {
            let old = tag(i.tags(), tags::REPLACES)?;
            Some((old.to_string(), i.instance_id()?.to_string()))
        })
        .collect())
}

fn target_of(image: &Image) -> Result<Target> {
    Ok(Target {
        image_id: image
            .image_id()
            .context("DescribeImages returned an image without an id")?
            .to_string(),
        build_id: tag(image.tags(), tags::BUILD_ID).map(str::to_string),
        created: image.creation_date().map(str::to_string),
        tags: image.tags().to_vec(),
        block_devices: image.block_device_mappings().to_vec(),
    })
}

/// The newest available image tagged `imgforge:image=name` with a build id (by creation date,
/// then build id), if any.
pub async fn newest_image(clients: &Clients, name: &str) -> Result<Option<Target>> {
    let images: Vec<Image> = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(filter(&format!("tag:{}", tags::IMAGE), &[name]))
        .filters(filter("state", &["available"]))
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .with_context(|| format!("DescribeImages for image name {name} failed"))?;
    let newest = images
        .iter()
        .filter(|i| tag(i.tags(), tags::BUILD_ID).is_some())
        .max_by_key(|i| {
            (
                i.creation_date().map(str::to_string),
                tag(i.tags(), tags::BUILD_ID),
            )
        });
    newest.map(target_of).transpose()
}

async fn explicit_image(clients: &Clients, id: &str) -> Result<Target> {
    let out = clients
        .ec2
        .describe_images()
        .image_ids(id)
        .send()
        .await
        .with_context(|| format!("cannot describe image {id}: check the id and the region"))?;
    let image = out
        .images()
        .first()
        .with_context(|| format!("image {id} not found: check the id and the region"))?;
    if image.state().map(|s| s.as_str()) != Some("available") {
        bail!(
            "image {id} is {}, not available: wait for it or pick another with --image",
            image
                .state()
                .map(|s| s.as_str())
                .unwrap_or("in an unknown state")
        );
    }
    target_of(image)
}

async fn termination_protected(clients: &Clients, id: &str) -> Result<bool> {
    let out = clients
        .ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::DisableApiTermination)
        .send()
        .await
        .with_context(|| format!("cannot read the termination protection of {id}"))?;
    Ok(out
        .disable_api_termination()
        .and_then(|v| v.value())
        .unwrap_or(false))
}

/// Auto Scaling group of each of `ids` that belongs to one.
async fn groups_of(clients: &Clients, ids: &[String]) -> Result<HashMap<String, String>> {
    let found = cloud::in_chunks(ids, ASG_BATCH, |chunk| async move {
        clients
            .asg
            .describe_auto_scaling_instances()
            .set_instance_ids(Some(chunk))
            .max_records(ASG_BATCH as i32)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context("DescribeAutoScalingInstances failed")
    })
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|i| Some((i.instance_id?, i.auto_scaling_group_name?)))
        .collect())
}

/// How many of `ids` have an impaired instance or system status check.
async fn impaired(clients: &Clients, ids: &[String]) -> Result<usize> {
    let statuses = cloud::describe_instance_status(clients, ids, false).await?;
    Ok(statuses
        .iter()
        .filter(|s| {
            let bad = |x: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
                x.and_then(|x| x.status()).map(|s| s.as_str()) == Some("impaired")
            };
            bad(s.instance_status()) || bad(s.system_status())
        })
        .count())
}

/// Builds the plan at time `now`.
pub async fn build(clients: &Clients, selection: &Selection, now: SystemTime) -> Result<Plan> {
    let mut filters = vec![filter("instance-state-name", &["running"])];
    filters.push(match &selection.image_name {
        Some(name) => filter(&format!("tag:{}", tags::IMAGE), &[name]),
        None => filter("tag-key", &[tags::IMAGE]),
    });
    filters.extend(selection.filters.iter().cloned());
    let instances = describe_instances(clients, filters).await?;
    let targets = targets(clients, selection, &instances).await?;

    let mut items: Vec<Item> = instances
        .into_iter()
        .filter_map(|instance| {
            let id = instance.instance_id()?.to_string();
            let image_name = tag(instance.tags(), tags::IMAGE)?.to_string();
            let launched = instance
                .launch_time()
                .and_then(|t| SystemTime::try_from(*t).ok());
            let age = launched
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            Some(Item {
                instance,
                id,
                image_name,
                age,
                action: Action::Replace,
            })
        })
        .collect();
    items.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.id.cmp(&b.id)));
    keep_the_current(
        &mut items,
        &targets,
        selection.max_age,
        selection.superseded,
    );
    decide_replacements(clients, &mut items, &targets).await?;

    let floor = (items.len() * selection.min_healthy_percent as usize).div_ceil(100);
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let healthy = ids.len() - impaired(clients, &ids).await?;
    Ok(Plan {
        items,
        targets,
        floor,
        healthy,
        max_age: selection.max_age,
        superseded: selection.superseded,
    })
}

/// The target image of each image name the instances carry: `--image` for all, else the
/// newest available image of that name.
async fn targets(
    clients: &Clients,
    selection: &Selection,
    instances: &[Instance],
) -> Result<BTreeMap<String, Target>> {
    let names: BTreeSet<String> = instances
        .iter()
        .filter_map(|i| tag(i.tags(), tags::IMAGE).map(str::to_string))
        .collect();
    let mut targets = BTreeMap::new();
    match &selection.image {
        Some(id) => {
            let target = explicit_image(clients, id).await?;
            for name in names {
                targets.insert(name, target.clone());
            }
        }
        None => {
            for name in names {
                if let Some(t) = newest_image(clients, &name).await? {
                    targets.insert(name, t);
                }
            }
        }
    }
    Ok(targets)
}

/// The rotation's rule for people: `max age 30d`, `superseded images`, or both.
fn rule(max_age: Option<Duration>, superseded: bool) -> String {
    match (max_age, superseded) {
        (Some(age), true) => format!("max age {}, or on a superseded image", format_age(age)),
        (Some(age), false) => format!("max age {}", format_age(age)),
        (None, _) => "replacing instances on a superseded image".to_string(),
    }
}

/// Instances younger than `max_age` (or any age without one) are kept (saying why) unless
/// `superseded` and their image is not the target of their name; the others are replaced,
/// except those tagged `imgforge:rotate=never`, which are skipped.
fn keep_the_current(
    items: &mut [Item],
    targets: &BTreeMap<String, Target>,
    max_age: Option<Duration>,
    superseded: bool,
) {
    for item in items {
        let current = item.instance.image_id().unwrap_or("");
        let target = targets.get(&item.image_name);
        let too_old = max_age.is_some_and(|age| item.age > age);
        let on_old_image = superseded && target.is_some_and(|t| t.image_id != current);
        if too_old || on_old_image {
            if tag(item.instance.tags(), tags::ROTATE) == Some("never") {
                item.action = Action::Skip {
                    reason: format!("tagged {}=never", tags::ROTATE),
                };
            }
            continue;
        }
        let young = match max_age {
            Some(age) => format!("younger than {}", format_age(age)),
            None => "not superseded".to_string(),
        };
        item.action = Action::Keep {
            reason: match target {
                Some(t) if t.image_id == current => format!("on the target image, {young}"),
                Some(t) => format!("{young} (newest image is {})", t.image_id),
                None => young,
            },
        };
    }
}

/// For each instance still to replace: skip it under termination protection, hand it to its
/// Auto Scaling group, or resume a replacement an earlier run launched; refuses when an
/// instance to replace has no target image.
async fn decide_replacements(
    clients: &Clients,
    items: &mut [Item],
    targets: &BTreeMap<String, Target>,
) -> Result<()> {
    let candidates: Vec<String> = items
        .iter()
        .filter(|i| i.action == Action::Replace)
        .map(|i| i.id.clone())
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let protected: BTreeSet<String> = stream::iter(candidates.iter().cloned())
        .map(|id| async move {
            Ok::<_, anyhow::Error>((termination_protected(clients, &id).await?, id))
        })
        .buffer_unordered(CONCURRENCY)
        .try_filter_map(|(p, id)| async move { Ok(p.then_some(id)) })
        .try_collect()
        .await?;
    let groups = groups_of(clients, &candidates).await?;
    let resumable = replacements(clients).await?;
    for item in items.iter_mut().filter(|i| i.action == Action::Replace) {
        item.action = if protected.contains(&item.id) {
            Action::Skip {
                reason: "termination protection is on".into(),
            }
        } else if let Some(group) = groups.get(&item.id) {
            Action::AutoScaling {
                group: group.clone(),
            }
        } else if let Some(new) = resumable.get(&item.id) {
            Action::Resume {
                replacement: new.clone(),
            }
        } else {
            Action::Replace
        };
        if matches!(item.action, Action::Replace | Action::Resume { .. })
            && !targets.contains_key(&item.image_name)
        {
            bail!(
                "no available image tagged {}={} with an {} tag to replace {} with: register \
                 one with `imgforge register`, or name one with --image ami-…",
                tags::IMAGE,
                item.image_name,
                tags::BUILD_ID,
                item.id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            [
                "i-1".to_string(),
                "31d".into(),
                "ami-a".into(),
                "replace".into(),
            ],
            [
                "i-22222".to_string(),
                "2h".into(),
                "ami-bb".into(),
                "keep".into(),
            ],
        ];
        let t = table(["INSTANCE", "AGE", "IMAGE", "ACTION"], &rows);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "INSTANCE  AGE  IMAGE   ACTION");
        assert_eq!(lines[1], "i-1       31d  ami-a   replace");
        assert_eq!(lines[2], "i-22222    2h  ami-bb  keep");
    }
}
