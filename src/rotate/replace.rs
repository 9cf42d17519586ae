//! Step 2 of a rotation: replace the planned standalone instances, launch before terminate.
//!
//! Uses: the [`Plan`]. Produces: an [`Outcome`]. Launch before terminate: an old instance goes
//! only once its replacement is healthy, so the count of healthy managed instances never falls
//! (the plan refuses to start below the floor). At most `max_surge` replacements are in flight;
//! one loop polls all of them with batched DescribeInstanceStatus calls, runs their health checks
//! concurrently, and terminates the old instances of those that became healthy in one batched
//! call. A replacement that is not healthy within the timeout is terminated, its old instance
//! keeps running and no further replacement starts.

use super::health::{AddressKind, HealthCheck};
use super::plan::{Action, Item, Plan, Target};
use crate::cloud::{self, tags, Clients};
use crate::events::{payload, Reporter};
use anyhow::{Context, Result};
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification,
    InstanceMetadataOptionsRequest, InstanceStatus, Placement, ResourceType,
    RunInstancesMonitoringEnabled, Tag, TagSpecification, Volume, VolumeType,
};
use futures::future::join_all;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Ids per batched Describe*/Terminate call.
const BATCH: usize = 100;
/// How often a `waiting` event reports progress while replacements are in flight.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How replacements are paced and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Replacements in flight at once (at least 1).
    pub max_surge: usize,
    /// Health check after the status checks, if any.
    pub health: Option<HealthCheck>,
    /// Address the health check connects to.
    pub health_address: AddressKind,
    /// Launch-to-healthy limit per replacement.
    pub health_timeout: Duration,
    /// Interval between polls.
    pub poll_interval: Duration,
}

/// What the replacement step did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (old, new) pairs: the new one healthy, the old one terminated.
    pub replaced: Vec<(String, String)>,
    /// What went wrong, one line per failed replacement.
    pub failures: Vec<String>,
    /// Planned replacements not started because rotation stopped.
    pub not_started: usize,
}

struct InFlight<'a> {
    item: &'a Item,
    new_id: String,
    started: Instant,
    waiting_for: String,
}

enum Poll {
    Waiting(String),
    Healthy,
    Failed(String),
}

/// Replaces the plan's `Replace` and `Resume` instances.
pub async fn execute(
    clients: &Clients,
    plan: &Plan,
    settings: &Settings,
    reporter: &Reporter,
) -> Result<Outcome> {
    let queue: VecDeque<&Item> = plan
        .items
        .iter()
        .filter(|i| matches!(i.action, Action::Replace | Action::Resume { .. }))
        .collect();
    let volume_ids: Vec<String> = queue
        .iter()
        .filter(|i| i.action == Action::Replace)
        .flat_map(|i| i.instance.block_device_mappings())
        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string))
        .collect();
    let mut run = Replacement {
        clients,
        plan,
        settings,
        reporter,
        volumes: describe_volumes(clients, &volume_ids).await?,
        queue,
        inflight: Vec::new(),
        outcome: Outcome::default(),
        stopped: false,
    };
    let probe_timeout = settings
        .poll_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut last_progress = Instant::now();
    loop {
        if !run.stopped {
            run.launch_batch().await;
        }
        if run.inflight.is_empty() {
            break;
        }
        tokio::time::sleep(settings.poll_interval).await;
        let polls = poll(clients, &run.inflight, settings, probe_timeout).await?;
        let (done, failed) = run.sort_polls(polls);
        run.retire_failed(failed).await?;
        run.retire_replaced(done).await?;
        let waiting = run.waiting_for();
        reporter.detail(&waiting);
        if !run.inflight.is_empty() && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            run.report_waiting(&waiting);
        }
    }
    run.outcome.not_started = run.queue.len();
    Ok(run.outcome)
}

/// A rotation's replacements under way.
struct Replacement<'a> {
    clients: &'a Clients,
    plan: &'a Plan,
    settings: &'a Settings,
    reporter: &'a Reporter,
    volumes: HashMap<String, Volume>,
    queue: VecDeque<&'a Item>,
    inflight: Vec<InFlight<'a>>,
    outcome: Outcome,
    /// A launch or a replacement failed: nothing new starts, those in flight finish.
    stopped: bool,
}

impl<'a> Replacement<'a> {
    /// Launches replacements for queued instances while fewer than `max_surge` are in flight.
    async fn launch_batch(&mut self) {
        let room = self.settings.max_surge.saturating_sub(self.inflight.len());
        let batch: Vec<&'a Item> = (0..room).map_while(|_| self.queue.pop_front()).collect();
        let starts = batch.iter().map(|item| {
            let target = self
                .plan
                .target(item)
                .expect("plan checked every replacement's target");
            start(self.clients, item, target, &self.volumes, self.reporter)
        });
        for (item, started) in batch.iter().zip(join_all(starts).await) {
            match started {
                Ok(new_id) => self.inflight.push(InFlight {
                    item,
                    new_id,
                    started: Instant::now(),
                    waiting_for: "launch".into(),
                }),
                Err(e) => {
                    let msg = format!("cannot launch a replacement for {}: {e:#}", item.id);
                    self.reporter.emit(
                        &msg,
                        &payload::Failed {
                            instance: Some(item.id.clone()),
                            reason: msg.clone(),
                            ..Default::default()
                        },
                    );
                    self.outcome.failures.push(msg);
                    self.stopped = true;
                }
            }
        }
    }

    /// Old instances whose replacement is healthy, and (old instance, reason) for those whose
    /// replacement failed or ran out of time; the others keep waiting.
    fn sort_polls(&mut self, polls: Vec<Poll>) -> (Vec<String>, Vec<(String, String)>) {
        let timeout = self.settings.health_timeout;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (f, p) in self.inflight.iter_mut().zip(polls) {
            match p {
                Poll::Healthy => done.push(f.item.id.clone()),
                Poll::Failed(reason) => failed.push((f.item.id.clone(), reason)),
                Poll::Waiting(what) if f.started.elapsed() > timeout => failed.push((
                    f.item.id.clone(),
                    format!(
                        "not healthy within {} (last: {what})",
                        humantime::format_duration(timeout)
                    ),
                )),
                Poll::Waiting(what) => f.waiting_for = what,
            }
        }
        (done, failed)
    }

    /// Terminates failed replacements (the old instances keep running) and stops the rotation.
    async fn retire_failed(&mut self, failed: Vec<(String, String)>) -> Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        self.stopped = true;
        let doomed: Vec<String> = self
            .inflight
            .iter()
            .filter(|f| failed.iter().any(|(old, _)| *old == f.item.id))
            .map(|f| f.new_id.clone())
            .collect();
        terminate(self.clients, &doomed).await.with_context(|| {
            format!(
                "cannot terminate the failed replacement(s) {}",
                doomed.join(", ")
            )
        })?;
        for (old, reason) in failed {
            let f = self.take_inflight(&old);
            let msg = format!(
                "replacement {} for {old} failed: {reason}; terminated it, {old} keeps running",
                f.new_id
            );
            self.reporter.emit(
                &msg,
                &payload::Failed {
                    instance: Some(old.to_string()),
                    replacement: Some(f.new_id.clone()),
                    image: None,
                    reason: reason.to_string(),
                },
            );
            self.outcome.failures.push(msg);
        }
        Ok(())
    }

    /// Terminates the old instances whose replacements are healthy.
    async fn retire_replaced(&mut self, done: Vec<String>) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        // The floor holds by construction: an old instance is terminated only after its
        // replacement passed every check, so the healthy count never goes down.
        terminate(self.clients, &done)
            .await
            .with_context(|| format!("cannot terminate the old instance(s) {}", done.join(", ")))?;
        for old in done {
            let f = self.take_inflight(&old);
            self.reporter.emit(
                &format!(
                    "{old} replaced by {} (healthy after {}s); terminated {old}",
                    f.new_id,
                    f.started.elapsed().as_secs()
                ),
                &payload::Replaced {
                    instance: old.clone(),
                    replacement: Some(f.new_id.clone()),
                    healthy_after_s: Some(f.started.elapsed().as_secs()),
                    ..Default::default()
                },
            );
            self.outcome.replaced.push((old, f.new_id));
        }
        Ok(())
    }

    /// Removes and returns the replacement in flight for old instance `old`.
    fn take_inflight(&mut self, old: &str) -> InFlight<'a> {
        let at = self
            .inflight
            .iter()
            .position(|f| f.item.id == old)
            .expect("in flight");
        self.inflight.remove(at)
    }

    /// What each replacement in flight waits for (`i-… status checks, …`).
    fn waiting_for(&self) -> String {
        self.inflight
            .iter()
            .map(|f| format!("{} {}", f.new_id, f.waiting_for))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reports the replacements in flight (`waiting` as [`Replacement::waiting_for`] says).
    fn report_waiting(&self, waiting: &str) {
        self.reporter.emit(
            &format!(
                "waiting for {} replacement(s), {} queued: {waiting}",
                self.inflight.len(),
                self.queue.len()
            ),
            &payload::Waiting {
                in_flight: self.inflight.len(),
                queued: self.queue.len(),
                replaced: self.outcome.replaced.len(),
            },
        );
    }
}

/// `run` with the old instance's type, key, EBS optimisation, network (subnet or zone,
/// security groups), IAM profile, metadata options and monitoring.
fn with_settings_of(
    mut run: RunInstancesFluentBuilder,
    old: &aws_sdk_ec2::types::Instance,
) -> RunInstancesFluentBuilder {
    run = run
        .set_instance_type(old.instance_type().cloned())
        .set_key_name(old.key_name().map(str::to_string))
        .set_ebs_optimized(old.ebs_optimized());
    if let Some(subnet) = old.subnet_id() {
        run = run.subnet_id(subnet);
    } else if let Some(az) = old.placement().and_then(|p| p.availability_zone()) {
        run = run.placement(Placement::builder().availability_zone(az).build());
    }
    let groups: Vec<String> = old
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_string))
        .collect();
    if !groups.is_empty() {
        run = run.set_security_group_ids(Some(groups));
    }
    if let Some(arn) = old.iam_instance_profile().and_then(|p| p.arn()) {
        run = run.iam_instance_profile(IamInstanceProfileSpecification::builder().arn(arn).build());
    }
    if let Some(m) = old.metadata_options() {
        run = run.metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .set_http_tokens(m.http_tokens().cloned())
                .set_http_endpoint(m.http_endpoint().cloned())
                .set_http_put_response_hop_limit(m.http_put_response_hop_limit())
                .build(),
        );
    }
    if let Some(state) = old.monitoring().and_then(|m| m.state()) {
        run = run.monitoring(
            RunInstancesMonitoringEnabled::builder()
                .enabled(state.as_str() == "enabled")
                .build(),
        );
    }
    run
}

/// Launches (or, resuming, adopts) the replacement of `item`; returns its id.
async fn start(
    clients: &Clients,
    item: &Item,
    target: &Target,
    volumes: &HashMap<String, Volume>,
    reporter: &Reporter,
) -> Result<String> {
    if let Action::Resume { replacement } = &item.action {
        reporter.emit(
            &format!(
                "{}: found its replacement {replacement} from an earlier run",
                item.id
            ),
            &payload::Resume {
                instance: item.id.clone(),
                replacement: replacement.to_string(),
            },
        );
        return Ok(replacement.clone());
    }
    let old = &item.instance;
    let user_data = clients
        .ec2
        .describe_instance_attribute()
        .instance_id(&item.id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .with_context(|| format!("cannot read the user data of {}", item.id))?
        .user_data()
        .and_then(|v| v.value())
        .map(str::to_string);
    let run = clients
        .ec2
        .run_instances()
        .image_id(&target.image_id)
        .min_count(1)
        .max_count(1)
        .set_user_data(user_data)
        .set_block_device_mappings(Some(block_devices(old, target, volumes)))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(replacement_tags(old.tags(), &item.id)))
                .build(),
        );
    let run = with_settings_of(run, old);
    let out = run.send().await.with_context(|| {
        format!(
            "RunInstances from {} with the settings of {} failed",
            target.image_id, item.id
        )
    })?;
    let new_id = out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .context("RunInstances returned no instance")?
        .to_string();
    reporter.emit(
        &format!(
            "{}: launched replacement {new_id} from {}",
            item.id, target.image_id
        ),
        &payload::Launch {
            instance: item.id.clone(),
            replacement: new_id.to_string(),
            image: target.image_id.clone(),
        },
    );
    Ok(new_id)
}

/// The old instance's tags (without `aws:` ones) plus `imgforge:replaces=<old id>`.
fn replacement_tags(old: &[Tag], old_id: &str) -> Vec<Tag> {
    old.iter()
        .filter(|t| {
            t.key()
                .is_some_and(|k| !k.starts_with("aws:") && k != tags::REPLACES)
        })
        .cloned()
        .chain([Tag::builder().key(tags::REPLACES).value(old_id).build()])
        .collect()
}

/// EBS settings of the old instance's volumes (size at least the image's), without snapshots:
/// devices the image has get its snapshots, others start empty.
fn block_devices(
    old: &aws_sdk_ec2::types::Instance,
    target: &Target,
    volumes: &HashMap<String, Volume>,
) -> Vec<BlockDeviceMapping> {
    old.block_device_mappings()
        .iter()
        .filter_map(|m| {
            let device = m.device_name()?;
            let attached = m.ebs()?;
            let volume = volumes.get(attached.volume_id()?)?;
            let image_size = target
                .block_devices
                .iter()
                .find(|b| b.device_name() == Some(device))
                .and_then(|b| b.ebs())
                .and_then(|e| e.volume_size());
            let size = volume.size().max(image_size);
            let kind = volume.volume_type();
            let mut ebs = EbsBlockDevice::builder()
                .set_volume_size(size)
                .set_volume_type(kind.cloned())
                .delete_on_termination(attached.delete_on_termination().unwrap_or(true));
            if matches!(
                kind,
                Some(VolumeType::Io1 | VolumeType::Io2 | VolumeType::Gp3)
            ) {
                ebs = ebs.set_iops(volume.iops());
            }
            if kind == Some(&VolumeType::Gp3) {
                ebs = ebs.set_throughput(volume.throughput());
            }
            if volume.encrypted() == Some(true) {
                ebs = ebs
                    .encrypted(true)
                    .set_kms_key_id(volume.kms_key_id().map(str::to_string));
            }
            Some(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(ebs.build())
                    .build(),
            )
        })
        .collect()
}

async fn describe_volumes(clients: &Clients, ids: &[String]) -> Result<HashMap<String, Volume>> {
    let found = cloud::in_chunks(ids, BATCH, |chunk| async move {
        clients
            .ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("volume-id")
                    .set_values(Some(chunk))
                    .build(),
            )
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context("DescribeVolumes failed")
    })
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|v: Volume| Some((v.volume_id()?.to_string(), v)))
        .collect())
}

/// Terminates `ids` in batches.
pub async fn terminate(clients: &Clients, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(BATCH) {
        clients
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await?;
    }
    Ok(())
}

/// Polls every replacement in flight once: state and status checks (batched), then the health
/// check of those that passed them (concurrently).
async fn poll(
    clients: &Clients,
    inflight: &[InFlight<'_>],
    settings: &Settings,
    probe_timeout: Duration,
) -> Result<Vec<Poll>> {
    let ids: Vec<String> = inflight.iter().map(|f| f.new_id.clone()).collect();
    let found = cloud::describe_instance_status(clients, &ids, true).await?;
    let status: HashMap<String, InstanceStatus> = found
        .into_iter()
        .filter_map(|s| Some((s.instance_id()?.to_string(), s)))
        .collect();
    let mut polls: Vec<Poll> = ids.iter().map(|id| status_poll(status.get(id))).collect();
    if let Some(check) = &settings.health {
        probe_healthy(
            clients,
            &ids,
            &mut polls,
            check,
            settings.health_address,
            probe_timeout,
        )
        .await?;
    }
    Ok(polls)
}

/// Where a replacement stands from its state and EC2 status checks alone.
fn status_poll(status: Option<&InstanceStatus>) -> Poll {
    let Some(s) = status else {
        return Poll::Waiting("not listed yet".into());
    };
    let state = s
        .instance_state()
        .and_then(|st| st.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "unknown".into());
    match state.as_str() {
        "pending" => return Poll::Waiting("pending".into()),
        "running" => {}
        other => return Poll::Failed(format!("it went to state {other}")),
    }
    let instance = s
        .instance_status()
        .and_then(|x| x.status())
        .map(|x| x.as_str());
    let system = s
        .system_status()
        .and_then(|x| x.status())
        .map(|x| x.as_str());
    match (instance, system) {
        (Some("ok"), Some("ok")) => Poll::Healthy,
        (Some("impaired"), _) | (_, Some("impaired")) => {
            Poll::Failed("its status checks report impaired".into())
        }
        (i, sy) => Poll::Waiting(format!(
            "status checks: instance {}, system {}",
            i.unwrap_or("-"),
            sy.unwrap_or("-")
        )),
    }
}

/// Runs the health check on the replacements whose status checks passed; one that does not
/// answer yet goes back to waiting.
async fn probe_healthy(
    clients: &Clients,
    ids: &[String],
    polls: &mut [Poll],
    check: &HealthCheck,
    address: AddressKind,
    probe_timeout: Duration,
) -> Result<()> {
    let passed: Vec<String> = ids
        .iter()
        .zip(polls.iter())
        .filter(|(_, p)| matches!(p, Poll::Healthy))
        .map(|(id, _)| id.clone())
        .collect();
    if passed.is_empty() {
        return Ok(());
    }
    let instances = cloud::in_chunks(&passed, BATCH, |chunk| {
        cloud::describe_instances(
            clients,
            vec![Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk))
                .build()],
        )
    })
    .await?;
    let addresses: HashMap<String, Option<IpAddr>> = instances
        .iter()
        .filter_map(|i| {
            let ip = match address {
                AddressKind::Private => i.private_ip_address(),
                AddressKind::Public => i.public_ip_address(),
            };
            Some((
                i.instance_id()?.to_string(),
                ip.and_then(|ip| ip.parse().ok()),
            ))
        })
        .collect();
    let probes = ids
        .iter()
        .zip(polls.iter_mut())
        .filter(|(_, p)| matches!(p, Poll::Healthy))
        .map(|(id, p)| {
            let address = addresses.get(id).copied().flatten();
            async move {
                *p = match address {
                    None => Poll::Waiting("no address for the health check yet".into()),
                    Some(ip) => match check.probe(ip, probe_timeout).await {
                        Ok(()) => Poll::Healthy,
                        Err(why) => Poll::Waiting(format!("health check: {why}")),
                    },
                };
            }
        });
    join_all(probes).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_tags_copy_the_old_ones_and_name_the_old_instance() {
        let old = vec![
            Tag::builder().key("Name").value("web-1").build(),
            Tag::builder()
                .key("aws:cloudformation:stack-name")
                .value("s")
                .build(),
            Tag::builder().key(tags::REPLACES).value("i-older").build(),
            Tag::builder()
                .key(tags::IMAGE)
                .value("debian-12-web")
                .build(),
        ];
        let new = replacement_tags(&old, "i-old");
        let pairs: Vec<_> = new
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Name", "web-1"),
                (tags::IMAGE, "debian-12-web"),
                (tags::REPLACES, "i-old")
            ]
        );
    }
}
