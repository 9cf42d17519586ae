//! Step 3 of a rotation: members of Auto Scaling groups are rotated through the group, not
//! behind its back.
//!
//! Uses: the [`Plan`]'s `AutoScaling` items. Produces: an [`Outcome`]. Step by step: raise the
//! desired capacity by the surge, wait until the new members are InService and Healthy, then
//! TerminateInstanceInAutoScalingGroup on the oldest with ShouldDecrementDesiredCapacity. With
//! `--asg-instance-refresh`, StartInstanceRefresh does the whole job (launch before terminate)
//! and DescribeInstanceRefreshes is followed to its end.

use super::plan::{Action, Item, Plan};
use crate::cloud::{describe_instances, Clients};
use crate::events::{payload, Reporter};
use anyhow::{bail, Context, Result};
use aws_sdk_autoscaling::types::{AutoScalingGroup, RefreshPreferences};
use aws_sdk_ec2::types::Filter;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How groups are rotated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// New members launched at once.
    pub max_surge: usize,
    /// Floor for StartInstanceRefresh's MinHealthyPercentage.
    pub min_healthy_percent: u32,
    /// Use StartInstanceRefresh.
    pub instance_refresh: bool,
    /// Limit on each wait for new members (or for the whole refresh).
    pub timeout: Duration,
    /// Interval between polls.
    pub poll_interval: Duration,
}

/// What the Auto Scaling step did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Old members terminated after their replacements were in service.
    pub replaced: usize,
}

/// Rotates the old members of every group in the plan.
pub async fn execute(
    clients: &Clients,
    plan: &Plan,
    settings: &Settings,
    reporter: &Reporter,
) -> Result<Outcome> {
    let mut groups: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in &plan.items {
        if let Action::AutoScaling { group } = &item.action {
            groups.entry(group).or_default().push(item);
        }
    }
    let mut outcome = Outcome::default();
    for (group, old) in groups {
        if settings.instance_refresh {
            refresh(clients, group, old.len(), settings, reporter).await?;
            outcome.replaced += old.len();
        } else {
            outcome.replaced += step(clients, plan, group, &old, settings, reporter).await?;
        }
    }
    Ok(outcome)
}

async fn describe_group(clients: &Clients, name: &str) -> Result<AutoScalingGroup> {
    clients
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .with_context(|| format!("cannot describe auto scaling group {name}"))?
        .auto_scaling_groups()
        .first()
        .cloned()
        .with_context(|| format!("auto scaling group {name} not found"))
}

/// The image group `name` launches: its launch template's version (`$Default`, `$Latest` or
/// a number) as the group names it.
pub async fn launch_image(clients: &Clients, name: &str) -> Result<String> {
    let group = describe_group(clients, name).await?;
    let spec = group
        .launch_template()
        .or_else(|| {
            group
                .mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .and_then(|t| t.launch_template_specification())
        })
        .with_context(|| {
            format!("auto scaling group {name} has no launch template: its image cannot be checked")
        })?;
    let mut request = clients
        .ec2
        .describe_launch_template_versions()
        .versions(spec.version().unwrap_or("$Default"));
    request = match (spec.launch_template_id(), spec.launch_template_name()) {
        (Some(id), _) => request.launch_template_id(id),
        (None, Some(n)) => request.launch_template_name(n),
        (None, None) => {
            bail!("auto scaling group {name} names its launch template by neither id nor name")
        }
    };
    let versions = request
        .send()
        .await
        .with_context(|| format!("cannot read the launch template of auto scaling group {name}"))?;
    versions
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .and_then(|d| d.image_id())
        .map(str::to_string)
        .with_context(|| format!("the launch template of auto scaling group {name} names no image"))
}

/// Members that are InService and Healthy.
fn in_service(group: &AutoScalingGroup) -> BTreeSet<String> {
    group
        .instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state().map(|s| s.as_str()) == Some("InService")
                && i.health_status() == Some("Healthy")
        })
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect()
}

/// Waits until `surge` members that were not in `before` are InService and Healthy; past the
/// timeout, terminates the new members (restoring the desired capacity) and fails, the old
/// members still running.
async fn wait_for_new_members(
    clients: &Clients,
    name: &str,
    before: &BTreeSet<String>,
    surge: usize,
    settings: &Settings,
    reporter: &Reporter,
) -> Result<Vec<String>> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(settings.poll_interval).await;
        let group = describe_group(clients, name).await?;
        let fresh: Vec<String> = in_service(&group).difference(before).cloned().collect();
        if fresh.len() >= surge {
            return Ok(fresh);
        }
        reporter.detail(&format!(
            "{name}: {}/{surge} new members in service",
            fresh.len()
        ));
        if started.elapsed() > settings.timeout {
            let new: Vec<String> = group
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .filter(|id| !before.contains(id))
                .collect();
            for id in &new {
                terminate_member(clients, id).await?;
            }
            bail!(
                "auto scaling group {name}: only {} of {surge} new member(s) in service \
                 after {}; terminated the new ones ({}) and restored the desired capacity, \
                 the old members keep running",
                fresh.len(),
                humantime::format_duration(settings.timeout),
                new.join(", ")
            );
        }
    }
}

/// Rotates `old` (oldest first) through `name`, `max_surge` at a time; returns how many.
async fn step(
    clients: &Clients,
    plan: &Plan,
    name: &str,
    old: &[&Item],
    settings: &Settings,
    reporter: &Reporter,
) -> Result<usize> {
    let mut done = 0;
    for batch in old.chunks(settings.max_surge) {
        let group = describe_group(clients, name).await?;
        let desired = group.desired_capacity().unwrap_or(0);
        let max = group.max_size().unwrap_or(0);
        let surge = (batch.len() as i32).min(max - desired);
        if surge < 1 {
            bail!(
                "auto scaling group {name} is at its MaxSize ({max}), so it cannot launch \
                 replacements before terminating: raise its MaxSize by {}, or use \
                 --asg-instance-refresh",
                batch.len()
            );
        }
        let before: BTreeSet<String> = group
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        clients
            .asg
            .set_desired_capacity()
            .auto_scaling_group_name(name)
            .desired_capacity(desired + surge)
            .honor_cooldown(false)
            .send()
            .await
            .with_context(|| format!("cannot raise the desired capacity of {name}"))?;
        reporter.emit(
            &format!("{name}: desired capacity {desired} → {}", desired + surge),
            &payload::AsgSurge {
                group: name.to_string(),
                desired: desired + surge,
            },
        );
        let fresh =
            wait_for_new_members(clients, name, &before, surge as usize, settings, reporter)
                .await?;
        if let Some(target) = batch.first().and_then(|i| plan.target(i)) {
            warn_if_not_on(clients, name, &fresh, &target.image_id, reporter).await?;
        }
        for item in batch.iter().take(surge as usize) {
            terminate_member(clients, &item.id).await?;
            done += 1;
            reporter.emit(
                &format!(
                    "{name}: {} terminated, new member(s) {} in service",
                    item.id,
                    fresh.join(", ")
                ),
                &payload::Replaced {
                    instance: item.id.clone(),
                    group: Some(name.to_string()),
                    new_members: Some(fresh.clone()),
                    ..Default::default()
                },
            );
        }
    }
    Ok(done)
}

/// Reports new members that run another image than `target`: the group's launch template
/// decides what it launches, and imgforge does not change launch templates.
async fn warn_if_not_on(
    clients: &Clients,
    name: &str,
    members: &[String],
    target: &str,
    reporter: &Reporter,
) -> Result<()> {
    let found = describe_instances(
        clients,
        vec![Filter::builder()
            .name("instance-id")
            .set_values(Some(members.to_vec()))
            .build()],
    )
    .await?;
    for i in found {
        let image = i.image_id().unwrap_or("?");
        if image != target {
            let id = i.instance_id().unwrap_or("?");
            reporter.emit(
                &format!(
                    "{name}: new member {id} runs {image}, not the target {target}: point the \
                     group's launch template at {target} and rotate again"
                ),
                &payload::Warning {
                    group: Some(name.to_string()),
                    instance: Some(id.to_string()),
                    image: Some(image.to_string()),
                    target: Some(target.to_string()),
                    ..Default::default()
                },
            );
        }
    }
    Ok(())
}

async fn terminate_member(clients: &Clients, id: &str) -> Result<()> {
    clients
        .asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .with_context(|| format!("TerminateInstanceInAutoScalingGroup {id} failed"))?;
    Ok(())
}

/// Hands group `name` to an instance refresh and follows it to its end.
async fn refresh(
    clients: &Clients,
    name: &str,
    old: usize,
    settings: &Settings,
    reporter: &Reporter,
) -> Result<()> {
    let min = settings.min_healthy_percent as i32;
    let max = (min + 100).min(200);
    let started = clients
        .asg
        .start_instance_refresh()
        .auto_scaling_group_name(name)
        .preferences(
            RefreshPreferences::builder()
                .min_healthy_percentage(min)
                .max_healthy_percentage(max)
                .build(),
        )
        .send()
        .await
        .with_context(|| {
            format!(
                "StartInstanceRefresh on auto scaling group {name} failed (moto does not \
                 implement it; on AWS check the group's launch template): run without \
                 --asg-instance-refresh to rotate the group step by step"
            )
        })?;
    let id = started
        .instance_refresh_id()
        .context("StartInstanceRefresh returned no id")?
        .to_string();
    reporter.emit(
        &format!("{name}: instance refresh {id} started for {old} old member(s)"),
        &payload::AsgRefresh {
            group: name.to_string(),
            refresh: id.clone(),
            min_healthy: min,
            max_healthy: max,
        },
    );
    let begun = Instant::now();
    loop {
        tokio::time::sleep(settings.poll_interval).await;
        let out = clients
            .asg
            .describe_instance_refreshes()
            .auto_scaling_group_name(name)
            .instance_refresh_ids(&id)
            .send()
            .await
            .with_context(|| format!("cannot follow instance refresh {id} of {name}"))?;
        let Some(r) = out.instance_refreshes().first() else {
            bail!("instance refresh {id} of {name} disappeared");
        };
        let status = r.status().map(|s| s.as_str()).unwrap_or("unknown");
        reporter.detail(&format!(
            "{name}: refresh {status}, {}% done",
            r.percentage_complete().unwrap_or(0)
        ));
        match status {
            "Successful" => return Ok(()),
            "Failed" | "Cancelled" | "RollbackSuccessful" | "RollbackFailed" => bail!(
                "instance refresh {id} of {name} ended {status}: {}",
                r.status_reason().unwrap_or("no reason given")
            ),
            _ if begun.elapsed() > settings.timeout => bail!(
                "instance refresh {id} of {name} still {status} after {}; it goes on in AWS, \
                 follow it with `aws autoscaling describe-instance-refreshes`",
                humantime::format_duration(settings.timeout)
            ),
            _ => {}
        }
    }
}
