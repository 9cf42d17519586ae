//! `imgforge rotate` against a real moto_server (under libfaketime, so that "old" instances
//! exist), driving the real binary; the fleet is set up and checked through the real SDK.

mod common;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, Filter, Instance,
    InstanceAttributeName, InstanceType, ResourceType, Tag, TagSpecification, VolumeType,
};
use aws_sdk_ec2::Client;
use common::Moto;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "debian-12-web";
const USER_DATA: &str = "IyEvYmluL3NoCmVjaG8gd2Vi"; // "#!/bin/sh\necho web"

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

fn tag_of<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Registers an image tagged like `imgforge register` tags it.
async fn register(ec2: &Client, build: &str) -> String {
    let id = ec2
        .register_image()
        .name(format!("{NAME}-{build}"))
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    ec2.create_tags()
        .resources(&id)
        .tags(tag("imgforge:image", NAME))
        .tags(tag("imgforge:build-id", build))
        .tags(tag("Name", &format!("{NAME}-{build}")))
        .send()
        .await
        .unwrap();
    id
}

/// The settings every fleet instance is launched with.
struct Settings {
    subnet: String,
    group: String,
}

async fn settings(ec2: &Client) -> Settings {
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let group = ec2
        .create_security_group()
        .group_name("web")
        .description("web servers")
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    ec2.create_key_pair().key_name("ops").send().await.unwrap();
    Settings { subnet, group }
}

/// Launches one instance of `image` with the fleet's settings and `extra` tags.
async fn launch(
    ec2: &Client,
    s: &Settings,
    image: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut tags = vec![tag("Name", name), tag("team", "web")];
    tags.extend(extra.iter().map(|(k, v)| tag(k, v)));
    ec2.run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::T3Small)
        .key_name("ops")
        .subnet_id(&s.subnet)
        .security_group_ids(&s.group)
        .user_data(USER_DATA)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(20)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string()
}

async fn instances(ec2: &Client, filters: Vec<Filter>) -> Vec<Instance> {
    let pages: Vec<_> = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    pages
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .collect()
}

async fn instance(ec2: &Client, id: &str) -> Instance {
    instances(ec2, vec![filter("instance-id", &[id])])
        .await
        .remove(0)
}

fn state(i: &Instance) -> &str {
    i.state().unwrap().name().unwrap().as_str()
}

async fn running_managed(ec2: &Client) -> usize {
    instances(
        ec2,
        vec![
            filter("tag:imgforge:image", &[NAME]),
            filter("instance-state-name", &["running"]),
        ],
    )
    .await
    .len()
}

/// Samples the count of running managed instances until stopped; returns (minimum, samples).
fn start_poller(ec2: Client) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(usize, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let (mut min, mut samples) = (usize::MAX, 0);
        while !flag.load(Ordering::SeqCst) {
            min = min.min(running_managed(&ec2).await);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (min, samples)
    });
    (stop, handle)
}

/// Runs the binary with `args` against moto; returns (code, stdout, stderr).
async fn imgforge(moto: &Moto, args: &[&str]) -> (i32, String, String) {
    let mut cmd = common::imgforge();
    cmd.args(args)
        .envs(moto.env())
        .env("IMGFORGE_POLL_INTERVAL", "100ms");
    tokio::task::spawn_blocking(move || common::run(&mut cmd))
        .await
        .unwrap()
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The CI signing key and an `allowed_signers` file trusting it, in a directory of their own.
struct Signing {
    keys: tempfile::TempDir,
    ci: std::path::PathBuf,
    trusted: String,
}

/// A new CI key and the `allowed_signers` file trusting it.
fn signing() -> Signing {
    let keys = tempfile::tempdir().unwrap();
    let (ci, ci_pub) = common::ssh_key(keys.path(), "ci");
    let trusted = common::allowed_signers(keys.path(), "ci@example.com", &ci_pub);
    let trusted = trusted.to_str().unwrap().to_string();
    Signing { keys, ci, trusted }
}

/// Puts `pairs` as tags on `image`.
async fn tag_image(ec2: &Client, image: &str, pairs: Vec<(String, String)>) {
    let mut request = ec2.create_tags().resources(image);
    for (k, v) in pairs {
        request = request.tags(tag(&k, &v));
    }
    request.send().await.unwrap();
}

/// Two managed instances of build-1 launched 31 days ago, then build-2 registered now: (the
/// old instances, build-2's image id).
async fn two_old_instances_and_a_new_image(moto: &Moto, ec2: &Client) -> (Vec<String>, String) {
    let s = settings(ec2).await;
    moto.set_offset("-31d");
    let v1 = register(ec2, "build-1").await;
    let mut old = Vec::new();
    for n in 0..2 {
        let name = format!("web-{n}");
        old.push(launch(ec2, &s, &v1, &name, &[("imgforge:image", NAME)]).await);
    }
    moto.set_offset("+0");
    (old, register(ec2, "build-2").await)
}

/// A mixed fleet: old instances made at -31d, young ones at +0.
struct Fleet {
    v1: String,
    v2: String,
    old: Vec<String>,
    protected: String,
    never: String,
    young: Vec<String>,
    unmanaged_old: String,
}

async fn fleet(moto: &Moto, ec2: &Client) -> Fleet {
    let s = settings(ec2).await;
    moto.set_offset("-31d");
    let v1 = register(ec2, "build-1").await;
    let mut old = Vec::new();
    for n in 0..3 {
        old.push(
            launch(
                ec2,
                &s,
                &v1,
                &format!("web-{n}"),
                &[("imgforge:image", NAME)],
            )
            .await,
        );
    }
    let protected = launch(ec2, &s, &v1, "web-protected", &[("imgforge:image", NAME)]).await;
    ec2.modify_instance_attribute()
        .instance_id(&protected)
        .disable_api_termination(AttributeBooleanValue::builder().value(true).build())
        .send()
        .await
        .unwrap();
    let never = launch(
        ec2,
        &s,
        &v1,
        "web-pet",
        &[("imgforge:image", NAME), ("imgforge:rotate", "never")],
    )
    .await;
    let unmanaged_old = launch(ec2, &s, &v1, "not-ours", &[]).await;
    moto.set_offset("+0");
    let v2 = register(ec2, "build-2").await;
    let young = vec![
        launch(ec2, &s, &v2, "web-new", &[("imgforge:image", NAME)]).await,
        launch(ec2, &s, &v1, "web-recent", &[("imgforge:image", NAME)]).await,
    ];
    Fleet {
        v1,
        v2,
        old,
        protected,
        never,
        young,
        unmanaged_old,
    }
}

async fn user_data(ec2: &Client, id: &str) -> Option<String> {
    ec2.describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap()
        .user_data()
        .and_then(|v| v.value())
        .map(str::to_string)
}

async fn root_volume(ec2: &Client, i: &Instance) -> (i32, String) {
    let id = i.block_device_mappings()[0]
        .ebs()
        .unwrap()
        .volume_id()
        .unwrap();
    let v = ec2.describe_volumes().volume_ids(id).send().await.unwrap();
    let v = &v.volumes()[0];
    (
        v.size().unwrap(),
        v.volume_type().unwrap().as_str().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaces_exactly_the_old_instances_keeping_the_floor_then_does_nothing() {
    let moto = Moto::start_faketime();
    let ec2 = Client::new(&moto.sdk_config().await);
    let f = fleet(&moto, &ec2).await;
    // The fake clock really made old instances.
    let launched = instance(&ec2, &f.old[0])
        .await
        .launch_time()
        .unwrap()
        .secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now - launched > 30 * 86_400,
        "moto did not launch in the past"
    );
    let all_before = instances(&ec2, vec![]).await.len();

    // Dry run: the plan names exactly the old ones for replacement, and nothing changes.
    let (code, out, err) = imgforge(
        &moto,
        &[
            "rotate",
            "--max-age",
            "30d",
            "--image-name",
            NAME,
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    for id in &f.old {
        let line = out.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(line.contains(&format!("replace from {}", f.v2)), "{line}");
        assert!(line.contains("31d"), "{line}");
    }
    for id in f.young.iter().chain([&f.protected, &f.never]) {
        let line = out.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(!line.contains("replace"), "{line}");
    }
    assert!(!out.contains(&f.unmanaged_old), "{out}");
    assert_eq!(instances(&ec2, vec![]).await.len(), all_before);

    // The rotation, watched by a poller.
    let managed = running_managed(&ec2).await;
    assert_eq!(managed, 7);
    let (stop, poller) = start_poller(ec2.clone());
    let (code, out, err) = imgforge(
        &moto,
        &[
            "--json",
            "rotate",
            "--max-age",
            "30d",
            "--image-name",
            NAME,
            "--max-surge",
            "2",
            "--min-healthy-percent",
            "100",
        ],
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (min, samples) = poller.await.unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(samples > 1, "the poller did not run");
    assert!(
        min >= managed,
        "running managed instances fell to {min}, floor {managed}"
    );

    let ev = events(&out);
    let plan = &events_of(&ev, "plan")[0]["instances"];
    let to_replace: BTreeSet<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "replace")
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(to_replace, f.old.iter().map(String::as_str).collect());
    let skipped: BTreeSet<&str> = events_of(&ev, "skip")
        .iter()
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        BTreeSet::from([f.protected.as_str(), f.never.as_str()])
    );
    let summary = events_of(&ev, "summary")[0];
    assert_eq!(summary["replaced"], 3);
    assert!(summary["api_calls"].as_u64().unwrap() > 0);

    for old_id in &f.old {
        let old = instance(&ec2, old_id).await;
        assert_ne!(state(&old), "running", "{old_id} was not terminated");
        let new = instances(&ec2, vec![filter("tag:imgforge:replaces", &[old_id])]).await;
        assert_eq!(new.len(), 1, "one replacement for {old_id}");
        let new = &new[0];
        assert_eq!(state(new), "running");
        assert_eq!(new.image_id(), Some(f.v2.as_str()));
        assert_eq!(new.instance_type(), old.instance_type());
        assert_eq!(new.subnet_id(), old.subnet_id());
        assert_eq!(new.key_name(), Some("ops"));
        let groups = |i: &Instance| -> Vec<String> {
            i.security_groups()
                .iter()
                .map(|g| g.group_id().unwrap().to_string())
                .collect()
        };
        assert_eq!(groups(new), groups(&old));
        for key in ["Name", "team", "imgforge:image"] {
            assert_eq!(tag_of(new, key), tag_of(&old, key), "tag {key}");
        }
        assert_eq!(
            user_data(&ec2, new.instance_id().unwrap()).await,
            user_data(&ec2, old_id).await
        );
        assert_eq!(root_volume(&ec2, new).await, (20, "gp3".to_string()));
    }
    for id in f
        .young
        .iter()
        .chain([&f.protected, &f.never, &f.unmanaged_old])
    {
        assert_eq!(state(&instance(&ec2, id).await), "running", "{id}");
    }
    assert_eq!(
        instance(&ec2, &f.young[1]).await.image_id(),
        Some(f.v1.as_str())
    );

    // A second run right after changes nothing and says so; selected here by a filter alone
    // (any instance with an imgforge:image tag and team=web).
    let all_after = instances(&ec2, vec![]).await;
    let (code, out, err) = imgforge(
        &moto,
        &[
            "--json",
            "rotate",
            "--max-age",
            "30d",
            "--filter",
            "tag:team=web",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let ev = events(&out);
    assert_eq!(events_of(&ev, "noop").len(), 1, "{out}");
    assert_eq!(
        events_of(&ev, "plan")[0]["instances"]
            .as_array()
            .unwrap()
            .len(),
        managed
    );
    assert!(events_of(&ev, "launch").is_empty());
    let again = instances(&ec2, vec![]).await;
    assert_eq!(again.len(), all_after.len());
    let states = |v: &[Instance]| -> Vec<(String, String)> {
        let mut s: Vec<_> = v
            .iter()
            .map(|i| (i.instance_id().unwrap().to_string(), state(i).to_string()))
            .collect();
        s.sort();
        s
    };
    assert_eq!(states(&again), states(&all_after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_failing_its_health_check_is_terminated_and_the_old_one_kept() {
    let moto = Moto::start_faketime();
    let ec2 = Client::new(&moto.sdk_config().await);
    let (old, _) = two_old_instances_and_a_new_image(&moto, &ec2).await;

    // No web server answers on moto's invented private addresses: the check can never pass.
    // (Where a sandbox proxy accepts every outbound TCP connection, a bare --health-port check
    // would connect, so the test asks for an HTTP 2xx, which only a real server gives.)
    let (code, out, err) = imgforge(
        &moto,
        &[
            "--json",
            "rotate",
            "--max-age",
            "30d",
            "--image-name",
            NAME,
            "--health-url",
            "/healthz",
            "--health-timeout",
            "3s",
        ],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("keeps running"), "{err}");
    let ev = events(&out);
    let failed = events_of(&ev, "failed");
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("health check"),
        "{out}"
    );
    assert_eq!(
        events_of(&ev, "launch").len(),
        1,
        "rotation stops after the failure"
    );
    assert_eq!(events_of(&ev, "summary")[0]["not_started"], 1);
    for id in &old {
        assert_eq!(state(&instance(&ec2, id).await), "running", "{id}");
    }
    let replacement = failed[0]["replacement"].as_str().unwrap();
    assert_ne!(state(&instance(&ec2, replacement).await), "running");
    assert_eq!(running_managed(&ec2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_midway_is_resumed_without_launching_twice() {
    let moto = Moto::start_faketime();
    let ec2 = Client::new(&moto.sdk_config().await);
    let s = settings(&ec2).await;
    moto.set_offset("-31d");
    let v1 = register(&ec2, "build-1").await;
    let old = launch(&ec2, &s, &v1, "web-0", &[("imgforge:image", NAME)]).await;
    moto.set_offset("+0");
    let v2 = register(&ec2, "build-2").await;

    // A long poll interval holds the run between launch and terminate; kill it there.
    let mut child = common::imgforge()
        .args(["--json", "rotate", "--max-age", "30d", "--image-name", NAME])
        .envs(moto.env())
        .env("IMGFORGE_POLL_INTERVAL", "1h")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let launched = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .find(|l| l.contains("\"event\":\"launch\""))
    })
    .await
    .unwrap()
    .expect("the run launched a replacement");
    child.kill().unwrap();
    child.wait().unwrap();
    let first: Value = serde_json::from_str(&launched).unwrap();
    let replacement = first["replacement"].as_str().unwrap().to_string();
    assert_eq!(state(&instance(&ec2, &old).await), "running");

    let (code, out, err) = imgforge(
        &moto,
        &["--json", "rotate", "--max-age", "30d", "--image-name", NAME],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let ev = events(&out);
    assert!(events_of(&ev, "launch").is_empty(), "{out}");
    let resumed = events_of(&ev, "resume");
    assert_eq!(resumed.len(), 1, "{out}");
    assert_eq!(resumed[0]["replacement"], replacement.as_str());
    assert_ne!(state(&instance(&ec2, &old).await), "running");
    let new = instance(&ec2, &replacement).await;
    assert_eq!(state(&new), "running");
    assert_eq!(new.image_id(), Some(v2.as_str()));
    let replacements = instances(&ec2, vec![filter("tag:imgforge:replaces", &[&old])]).await;
    assert_eq!(replacements.len(), 1);
}

#[test]
fn max_age_takes_only_s_m_h_d_w() {
    for bad in ["30", "30days", "1y", "1.5d"] {
        let (code, _, err) = common::run(common::imgforge().args([
            "rotate",
            "--max-age",
            bad,
            "--image-name",
            NAME,
        ]));
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("`30d`, `12h` or `2w`"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_an_auto_scaling_group_are_rotated_through_the_group() {
    use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as AsgTag};
    use aws_sdk_ec2::types::RequestLaunchTemplateData;

    let moto = Moto::start_faketime();
    let sdk = moto.sdk_config().await;
    let ec2 = Client::new(&sdk);
    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    let group = "web-asg";

    moto.set_offset("-31d");
    let v1 = register(&ec2, "build-1").await;
    let data = |image: &str| {
        RequestLaunchTemplateData::builder()
            .image_id(image)
            .instance_type(InstanceType::T3Small)
            .build()
    };
    ec2.create_launch_template()
        .launch_template_name("web")
        .launch_template_data(data(&v1))
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(group)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name("web")
                .version("$Latest")
                .build(),
        )
        .min_size(2)
        .max_size(4)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .tags(
            AsgTag::builder()
                .key("imgforge:image")
                .value(NAME)
                .propagate_at_launch(true)
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .build(),
        )
        .send()
        .await
        .unwrap();
    moto.set_offset("+0");
    let v2 = register(&ec2, "build-2").await;
    ec2.create_launch_template_version()
        .launch_template_name("web")
        .launch_template_data(data(&v2))
        .send()
        .await
        .unwrap();
    let old: BTreeSet<String> = instances(&ec2, vec![filter("tag:imgforge:image", &[NAME])])
        .await
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert_eq!(old.len(), 2, "the group's members carry the image tag");

    // The group launches from its template's image: under --require-signature, a valid
    // registration copied onto it from another image is refused before the group is touched.
    let Signing { ci, trusted, .. } = &signing();
    let args = [
        "--json",
        "rotate",
        "--max-age",
        "30d",
        "--image-name",
        NAME,
        "--max-surge",
        "1",
        "--require-signature",
        trusted,
    ];
    let sha = "5".repeat(64);
    let elsewhere = common::registration_tags(ci, "ami-0signedelsewhere", "build-2", &sha);
    tag_image(&ec2, &v2, elsewhere).await;
    let (code, out, err) = imgforge(&moto, &args).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&v2) && err.contains("does not check out"),
        "{err}"
    );
    assert!(events_of(&events(&out), "asg_surge").is_empty(), "{out}");
    let (desired, members) = group_members(&asg, group).await;
    assert_eq!(desired, Some(2));
    assert_eq!(members, old, "nothing launched or terminated");

    // Its own signed registration: the members are replaced through the group.
    tag_image(
        &ec2,
        &v2,
        common::registration_tags(ci, &v2, "build-2", &sha),
    )
    .await;
    let (stop, poller) = start_poller(ec2.clone());
    let (code, out, err) = imgforge(&moto, &args).await;
    stop.store(true, Ordering::SeqCst);
    let (min, samples) = poller.await.unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(samples > 1);
    assert!(min >= 2, "running managed instances fell to {min}");
    let ev = events(&out);
    assert_eq!(events_of(&ev, "asg_surge").len(), 2, "{out}");
    assert!(events_of(&ev, "warning").is_empty(), "{out}");
    assert!(
        events_of(&ev, "launch").is_empty(),
        "no RunInstances behind the group's back"
    );

    let (desired, members) = group_members(&asg, group).await;
    assert_eq!(desired, Some(2));
    assert_eq!(members.len(), 2);
    assert!(members.is_disjoint(&old), "old members remain: {members:?}");
    for id in &members {
        assert_eq!(instance(&ec2, id).await.image_id(), Some(v2.as_str()));
    }
    for id in &old {
        assert_ne!(state(&instance(&ec2, id).await), "running", "{id}");
    }
}

/// An Auto Scaling group's desired capacity and member instance ids.
async fn group_members(
    asg: &aws_sdk_autoscaling::Client,
    group: &str,
) -> (Option<i32>, BTreeSet<String>) {
    let g = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .unwrap();
    let g = &g.auto_scaling_groups()[0];
    let members = g
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    (g.desired_capacity(), members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_image_is_the_target_and_a_missing_one_is_named() {
    let moto = Moto::start_faketime();
    let ec2 = Client::new(&moto.sdk_config().await);
    let s = settings(&ec2).await;
    moto.set_offset("-31d");
    let v1 = register(&ec2, "build-1").await;
    let old = launch(&ec2, &s, &v1, "web-0", &[("imgforge:image", NAME)]).await;
    moto.set_offset("+0");
    register(&ec2, "build-2").await;
    let pinned = register(&ec2, "build-0-hotfix").await;

    let (code, out, err) = imgforge(
        &moto,
        &[
            "rotate",
            "--max-age",
            "30d",
            "--image-name",
            NAME,
            "--image",
            &pinned,
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with(old.as_str())).unwrap();
    assert!(line.ends_with(&format!("replace from {pinned}")), "{line}");

    let (code, _, err) = imgforge(
        &moto,
        &[
            "rotate",
            "--max-age",
            "30d",
            "--image-name",
            NAME,
            "--image",
            "ami-12345678",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("ami-12345678"), "{err}");
    assert_eq!(state(&instance(&ec2, &old).await), "running");
    assert_eq!(instances(&ec2, vec![]).await.len(), 1, "nothing launched");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_signature_launches_only_an_image_signed_by_an_allowed_key() {
    let moto = Moto::start_faketime();
    let ec2 = Client::new(&moto.sdk_config().await);
    let (_, v2) = two_old_instances_and_a_new_image(&moto, &ec2).await;
    let Signing { keys, ci, trusted } = &signing();
    let (intruder, _) = common::ssh_key(keys.path(), "intruder");
    let args = [
        "--json",
        "rotate",
        "--max-age",
        "30d",
        "--image-name",
        NAME,
        "--require-signature",
        trusted,
    ];
    let all_instances = instances(&ec2, vec![]).await.len();

    let sha = "5".repeat(64);
    // Refused, nothing launched: no signed registration; the fingerprint tag of the allowed
    // key (anyone who may tag images can write it); a registration signed by a key not
    // allowed; and the allowed key's valid registration of another image (tags copied from
    // a signed AMI onto this one).
    let forged_cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (vec![], "carries no signed registration"),
        (
            vec![("imgforge:signer".into(), common::ssh_fingerprint(ci))],
            "carries no signed registration",
        ),
        (
            common::registration_tags(&intruder, &v2, "build-2", &sha),
            "does not check out",
        ),
        (
            common::registration_tags(ci, "ami-0signedelsewhere", "build-2", &sha),
            "does not check out",
        ),
    ];
    for (pairs, named) in forged_cases {
        tag_image(&ec2, &v2, pairs).await;
        let (code, out, err) = imgforge(&moto, &args).await;
        assert_ne!(code, 0, "{out}");
        assert!(err.contains(&v2) && err.contains(named), "{err}");
        assert!(events_of(&events(&out), "launch").is_empty(), "{out}");
        assert_eq!(instances(&ec2, vec![]).await.len(), all_instances);
    }

    // The allowed key's registration of this very image: the old instances are replaced.
    tag_image(
        &ec2,
        &v2,
        common::registration_tags(ci, &v2, "build-2", &sha),
    )
    .await;
    let (code, out, err) = imgforge(&moto, &args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(events_of(&events(&out), "replaced").len(), 2, "{out}");
}
