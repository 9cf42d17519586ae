//! `imgforge prune` against a real moto_server (under libfaketime, so that old images exist),
//! driving the real binary.

mod common;

use aws_sdk_ec2::types::{RequestLaunchTemplateData, Tag};
use aws_sdk_ec2::Client;
use common::Moto;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const NAME: &str = "debian-12-web";

async fn register(ec2: &Client, name: &str, build: &str) -> (String, String) {
    let id = ec2
        .register_image()
        .name(format!("{name}-{build}"))
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    for (k, v) in [("imgforge:image", name), ("imgforge:build-id", build)] {
        ec2.create_tags()
            .resources(&id)
            .tags(Tag::builder().key(k).value(v).build())
            .send()
            .await
            .unwrap();
    }
    let image = ec2.describe_images().image_ids(&id).send().await.unwrap();
    let snapshot = image.images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    (id, snapshot)
}

async fn image_ids(ec2: &Client) -> BTreeSet<String> {
    let out = ec2.describe_images().owners("self").send().await.unwrap();
    out.images()
        .iter()
        .map(|i| i.image_id().unwrap().to_string())
        .collect()
}

async fn snapshot_ids(ec2: &Client) -> BTreeSet<String> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect()
}

async fn imgforge(moto: &Moto, args: &[&str]) -> (i32, String, String) {
    let mut cmd = common::imgforge();
    cmd.args(args).envs(moto.env());
    tokio::task::spawn_blocking(move || common::run(&mut cmd))
        .await
        .unwrap()
}

/// image id → ("keep" or "remove", reasons joined).
fn fates(stdout: &str) -> BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "keep" || e["event"] == "remove")
        .map(|e| {
            let reasons = e["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| x.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            (
                e["image"].as_str().unwrap().to_string(),
                (e["event"].as_str().unwrap().to_string(), reasons),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_newest_and_every_image_in_use_and_deletes_the_snapshots_of_the_rest() {
    let moto = Moto::start_faketime();
    let sdk = moto.sdk_config().await;
    let ec2 = Client::new(&sdk);
    let asg = aws_sdk_autoscaling::Client::new(&sdk);

    moto.set_offset("-31d");
    let b1 = register(&ec2, NAME, "build-1").await; // unused: goes
    let b2 = register(&ec2, NAME, "build-2").await; // latest version of a launch template
    let b3 = register(&ec2, NAME, "build-3").await; // default version of that template
    let b4 = register(&ec2, NAME, "build-4").await; // an auto scaling group's launch configuration
    moto.set_offset("+0");
    let b5 = register(&ec2, NAME, "build-5").await; // unused but young
    let b6 = register(&ec2, NAME, "build-6").await; // a stopped instance
    let b7 = register(&ec2, NAME, "build-7").await; // newest two
    let b8 = register(&ec2, NAME, "build-8").await;
    let other = register(&ec2, "other-app", "build-1").await; // another name: untouched

    let data = |image: &str| RequestLaunchTemplateData::builder().image_id(image).build();
    ec2.create_launch_template()
        .launch_template_name("web")
        .launch_template_data(data(&b3.0))
        .send()
        .await
        .unwrap();
    ec2.create_launch_template_version()
        .launch_template_name("web")
        .launch_template_data(data(&b2.0))
        .send()
        .await
        .unwrap();
    asg.create_launch_configuration()
        .launch_configuration_name("web-lc")
        .image_id(&b4.0)
        .instance_type("t3.micro")
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name("web-asg")
        .launch_configuration_name("web-lc")
        .min_size(0)
        .max_size(2)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    let stopped = ec2
        .run_instances()
        .image_id(&b6.0)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    ec2.stop_instances()
        .instance_ids(&stopped)
        .send()
        .await
        .unwrap();

    let images_before = image_ids(&ec2).await;
    let snapshots_before = snapshot_ids(&ec2).await;
    let prune = ["--json", "prune", "--image-name", NAME, "--keep", "2"];

    // Dry run: says what would go and why the rest stays; changes nothing.
    let (code, out, err) = imgforge(&moto, &[&prune[..], &["--dry-run"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    let f = fates(&out);
    assert_eq!(f.len(), 8, "{out}");
    let removed: BTreeSet<&str> = f
        .iter()
        .filter(|(_, (k, _))| k == "remove")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(removed, BTreeSet::from([b1.0.as_str(), b5.0.as_str()]));
    let why = |img: &(String, String)| f[&img.0].1.clone();
    assert!(
        why(&b2).contains("version 2 of launch template web"),
        "{}",
        why(&b2)
    );
    assert!(
        why(&b3).contains("default version 1 of launch template web"),
        "{}",
        why(&b3)
    );
    assert!(
        why(&b4).contains("auto scaling group web-asg"),
        "{}",
        why(&b4)
    );
    assert!(
        why(&b6).contains(&format!("{stopped} (stopped)")),
        "{}",
        why(&b6)
    );
    assert!(why(&b7).contains("among the newest 2"), "{}", why(&b7));
    assert!(why(&b8).contains("among the newest 2"), "{}", why(&b8));
    assert_eq!(image_ids(&ec2).await, images_before);
    assert_eq!(snapshot_ids(&ec2).await, snapshots_before);

    // With --min-age, the young unused image stays too.
    let (code, out, err) = imgforge(
        &moto,
        &[&prune[..], &["--dry-run", "--min-age", "30d"]].concat(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let f = fates(&out);
    assert_eq!(f[&b1.0].0, "remove");
    assert_eq!(
        f[&b5.0],
        ("keep".to_string(), "younger than 30d".to_string())
    );

    // The real run.
    let (code, out, err) = imgforge(&moto, &prune).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let images_after = image_ids(&ec2).await;
    let expected: BTreeSet<String> = images_before
        .iter()
        .filter(|i| **i != b1.0 && **i != b5.0)
        .cloned()
        .collect();
    assert_eq!(images_after, expected);
    assert!(images_after.contains(&other.0));
    let snapshots_after = snapshot_ids(&ec2).await;
    assert!(!snapshots_after.contains(&b1.1) && !snapshots_after.contains(&b5.1));
    for kept in [&b2, &b3, &b4, &b6, &b7, &b8, &other] {
        assert!(
            snapshots_after.contains(&kept.1),
            "snapshot of {} deleted",
            kept.0
        );
    }

    // Again: nothing to do.
    let (code, out, err) = imgforge(&moto, &prune).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to prune"), "{out}");
    assert_eq!(image_ids(&ec2).await, images_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_keeps_the_snapshots_and_the_templates_images() {
    let moto = Moto::start();
    let ec2 = Client::new(&moto.sdk_config().await);
    let old = register(&ec2, NAME, "build-1").await;
    let used = register(&ec2, NAME, "build-2").await;
    let newest = register(&ec2, NAME, "build-3").await;
    ec2.create_launch_template()
        .launch_template_name("web")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(&used.0)
                .build(),
        )
        .send()
        .await
        .unwrap();

    let (code, stdout, stderr) = imgforge(
        &moto,
        &[
            "--json",
            "prune",
            "--image-name",
            NAME,
            "--keep",
            "1",
            "--disable",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let removed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "removed")
        .collect();
    assert_eq!(removed.len(), 1, "{stdout}");
    assert_eq!(removed[0]["image"], old.0.as_str());
    assert_eq!(removed[0]["disabled"], true);

    // Disabled, not deregistered, with its snapshot; the template's image and the newest are
    // untouched. (moto lists disabled images even without IncludeDisabled, so the states are
    // read instead.)
    let described = ec2
        .describe_images()
        .image_ids(&old.0)
        .image_ids(&used.0)
        .image_ids(&newest.0)
        .include_disabled(true)
        .send()
        .await
        .unwrap();
    let states: BTreeMap<String, String> = described
        .images()
        .iter()
        .map(|i| {
            (
                i.image_id().unwrap().to_string(),
                i.state().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            (old.0.clone(), "disabled".to_string()),
            (used.0.clone(), "available".to_string()),
            (newest.0.clone(), "available".to_string()),
        ])
    );
    assert!(
        snapshot_ids(&ec2).await.contains(&old.1),
        "the snapshot is kept"
    );
}
