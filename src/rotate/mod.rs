//! `imgforge rotate`: replaces instances older than a maximum age, or (`--superseded`) not on
//! the newest image of their name, with instances of the newest image, never dropping below the
//! capacity floor.
//!
//! The run is a sequence of steps: [`plan`] selects the managed instances and decides an action
//! for each; [`replace`] launches replacements (launch before terminate, at most `--max-surge` at
//! once), waits for status and health checks, and only then terminates the old instances;
//! instances in an Auto Scaling group go through [`asg`] instead. A re-run resumes: replacements
//! carry `imgforge:replaces=<old id>` and are found instead of launched twice.

pub mod asg;
pub mod health;
pub mod plan;
pub mod replace;

use crate::cloud::{self, summary, ApiCalls, CloudOptions};
use crate::events::{payload, Reporter};
use anyhow::{bail, Result};
use aws_sdk_ec2::types::Filter;
use std::time::{Duration, SystemTime};

/// What `imgforge rotate` is asked to do.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Replace instances older than this.
    pub max_age: Option<Duration>,
    /// Also replace instances whose image is not the newest image of their name, whatever
    /// their age.
    pub superseded: bool,
    /// Image name whose instances are managed (instances tagged `imgforge:image=NAME`).
    pub image_name: Option<String>,
    /// Target image id (default: the newest available image of the instance's image name).
    pub image: Option<String>,
    /// EC2 filters narrowing the selection.
    pub filters: Vec<Filter>,
    /// How many replacements run at once (launched before any old instance is terminated); 1
    /// or more.
    pub max_surge: u32,
    /// Floor on healthy managed instances, as a percentage of the fleet (0 to 100).
    pub min_healthy_percent: u32,
    /// After status checks pass, also require a TCP connection to this port.
    pub health_port: Option<u16>,
    /// After status checks pass, also require HTTP 2xx for GET on this path.
    pub health_url: Option<String>,
    /// Which address of the replacement the health check connects to.
    pub health_address: health::AddressKind,
    /// How long a replacement may take from launch to healthy before rotation stops.
    pub health_timeout: Duration,
    /// Hand Auto Scaling group members to StartInstanceRefresh instead.
    pub asg_instance_refresh: bool,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// Launch only images whose signed registration (`register --sign`) checks out against a
    /// key of this allowed-signers file and names the image it sits on.
    pub require_signature: Option<std::path::PathBuf>,
    /// Interval between polls while waiting.
    pub poll_interval: Duration,
    /// Instances per DescribeInstances page (5 to 1000).
    pub page_size: i32,
    /// Cloud connection.
    pub cloud: CloudOptions,
}

/// Parses an EC2 filter: `tag:team=web`, `name=v1,v2` or `Name=name,Values=v1,v2`.
pub fn parse_filter(text: &str) -> Result<Filter, String> {
    let refuse = || {
        format!(
            "`{text}` is not an EC2 filter: write NAME=VALUE[,VALUE…] such as `tag:team=web`, \
             or `Name=instance-type,Values=t3.micro,t3.small`"
        )
    };
    let (name, values) = match text.strip_prefix("Name=") {
        Some(rest) => rest.split_once(",Values=").ok_or_else(refuse)?,
        None => text.split_once('=').ok_or_else(refuse)?,
    };
    if name.is_empty() || values.is_empty() {
        return Err(refuse());
    }
    Ok(Filter::builder()
        .name(name)
        .set_values(Some(values.split(',').map(str::to_string).collect()))
        .build())
}

/// Runs `imgforge rotate`.
pub async fn run(args: RotateOptions, reporter: &Reporter) -> Result<()> {
    args.check()?;
    let health = health::HealthCheck::from_args(args.health_port, args.health_url.as_deref())?;
    let calls = ApiCalls::default();
    let clients = calls.clients(&cloud::load(&args.cloud).await?, args.page_size);

    reporter.phase("plan");
    let plan = plan::build(&clients, &args.selection(), SystemTime::now()).await?;
    plan.report(reporter);
    if let Some(allowed) = &args.require_signature {
        plan.check_signed(&clients, allowed).await?;
    }
    if args.dry_run {
        reporter.finish();
        summary(
            reporter,
            &calls,
            "dry run: nothing changed",
            payload::Summary {
                dry_run: Some(true),
                ..Default::default()
            },
        );
        return Ok(());
    }
    if plan.healthy < plan.floor {
        bail!(
            "only {} of the {} managed instances are healthy (status checks not impaired), below \
             the floor of {} (--min-healthy-percent {}): investigate the impaired ones, or lower \
             --min-healthy-percent to rotate anyway",
            plan.healthy,
            plan.items.len(),
            plan.floor,
            args.min_healthy_percent
        );
    }
    if plan.is_noop() {
        reporter.emit(
            &format!(
                "nothing to do: none of the {} managed instance(s) needs replacing",
                plan.items.len()
            ),
            &payload::Noop {
                instances: plan.items.len(),
            },
        );
        summary(
            reporter,
            &calls,
            "nothing changed",
            payload::Summary {
                changed: Some(false),
                ..Default::default()
            },
        );
        return Ok(());
    }
    let (ec2_outcome, asg_outcome) = replace_all(&clients, &plan, &args, health, reporter).await?;
    report_outcome(reporter, &calls, &plan, &ec2_outcome, &asg_outcome)?;
    asg_outcome?;
    Ok(())
}

impl RotateOptions {
    /// Refuses options outside their ranges, and a rotation that names no instances.
    fn check(&self) -> Result<()> {
        if self.max_surge == 0 {
            bail!("--max-surge 0 would never replace anything: give 1 or more");
        }
        if self.min_healthy_percent > 100 {
            bail!("--min-healthy-percent is a percentage: give 0 to 100");
        }
        if !(5..=1000).contains(&self.page_size) {
            bail!("the page size must be between 5 and 1000");
        }
        if self.max_age.is_none() && !self.superseded {
            bail!(
                "say which instances are due: --max-age 30d (older than that), --superseded \
                 (not on the newest image of their name), or both"
            );
        }
        if self.image_name.is_none() && self.filters.is_empty() {
            bail!(
                "say which instances to rotate: --image-name NAME (instances tagged \
                 imgforge:image=NAME) and/or --filter, e.g. --filter tag:team=web"
            );
        }
        Ok(())
    }

    fn selection(&self) -> plan::Selection {
        plan::Selection {
            image_name: self.image_name.clone(),
            image: self.image.clone(),
            filters: self.filters.clone(),
            max_age: self.max_age,
            superseded: self.superseded,
            min_healthy_percent: self.min_healthy_percent,
        }
    }
}

/// Replaces the plan's standalone instances, then (if they all succeeded) the members of
/// Auto Scaling groups through their groups.
async fn replace_all(
    clients: &cloud::Clients,
    plan: &plan::Plan,
    args: &RotateOptions,
    health: Option<health::HealthCheck>,
    reporter: &Reporter,
) -> Result<(replace::Outcome, Result<asg::Outcome>)> {
    let settings = replace::Settings {
        max_surge: args.max_surge as usize,
        health,
        health_address: args.health_address,
        health_timeout: args.health_timeout,
        poll_interval: args.poll_interval,
    };
    reporter.phase("replace");
    let ec2_outcome = replace::execute(clients, plan, &settings, reporter).await?;
    let asg_outcome = if plan.has_asg_work() && ec2_outcome.failures.is_empty() {
        reporter.phase("auto scaling");
        let asg_settings = asg::Settings {
            max_surge: args.max_surge as usize,
            min_healthy_percent: args.min_healthy_percent,
            instance_refresh: args.asg_instance_refresh,
            timeout: args.health_timeout,
            poll_interval: args.poll_interval,
        };
        asg::execute(clients, plan, &asg_settings, reporter).await
    } else {
        Ok(asg::Outcome::default())
    };
    reporter.finish();
    Ok((ec2_outcome, asg_outcome))
}

/// The summary of a rotation; an error naming the first failure if any replacement failed.
fn report_outcome(
    reporter: &Reporter,
    calls: &ApiCalls,
    plan: &plan::Plan,
    ec2_outcome: &replace::Outcome,
    asg_outcome: &Result<asg::Outcome>,
) -> Result<()> {
    let asg_replaced = asg_outcome.as_ref().map(|o| o.replaced).unwrap_or(0);
    let replaced = ec2_outcome.replaced.len() + asg_replaced;
    let failed = ec2_outcome.failures.len();
    summary(
        reporter,
        calls,
        &format!(
            "replaced {replaced}, failed {failed}, not started {}, skipped {}",
            ec2_outcome.not_started,
            plan.skipped()
        ),
        payload::Summary {
            replaced: Some(replaced),
            failed: Some(failed),
            not_started: Some(ec2_outcome.not_started),
            skipped: Some(plan.skipped()),
            ..Default::default()
        },
    );
    if let Some(first) = ec2_outcome.failures.first() {
        bail!(
            "rotation stopped: {first}{}; the old instance(s) kept running. Fix the cause \
             (the image, the health check, or the cloud's answer above) and run imgforge rotate \
             again: it resumes from the replacements already made",
            if failed > 1 {
                format!(" (and {} more failure(s))", failed - 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_short_and_cli_forms() {
        let f = parse_filter("tag:team=web").unwrap();
        assert_eq!(f.name(), Some("tag:team"));
        assert_eq!(f.values(), ["web"]);
        let f = parse_filter("Name=instance-type,Values=t3.micro,t3.small").unwrap();
        assert_eq!(f.name(), Some("instance-type"));
        assert_eq!(f.values(), ["t3.micro", "t3.small"]);
        assert!(parse_filter("team").is_err());
        assert!(parse_filter("Name=x").is_err());
        assert!(parse_filter("=web").is_err());
    }
}
