//! The exact RegisterImage and ImportSnapshot requests the SDK builds, captured with
//! aws-smithy's request-capture test utility: moto ignores these fields (RegisterImage keeps
//! only the name and description; ImportSnapshot returns 500), so they are asserted here.

use super::ami::{self, BootMode, Flavor, Root};
use super::{image_spec, import, AmiSettings, Destination, RegisterOptions, SnapshotUpload};
use crate::manifest::Manifest;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::test_util::capture_request;
use serde_json::json;
use std::collections::BTreeMap;

const BUILD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn manifest(firmware: &str) -> Manifest {
    serde_json::from_value(json!({
        "imgforge_version": "0.1.0",
        "name": "web",
        "version": "3.1.0",
        "definition": "images/web.toml",
        "ids": { "base": "a".repeat(64), "bake": "b".repeat(64), "build": BUILD },
        "service": { "repo": "https://git.example/web.git", "commit": "c".repeat(40) },
        "data_digest": "d".repeat(64),
        "firmware": firmware,
        "arch": "x86_64",
        "disk_size": 3u64 << 30,
        "artifacts": [],
        "built_at": "2026-11-25T10:00:00Z",
    }))
    .unwrap()
}

/// An EC2 client whose one request is captured instead of sent.
fn capturing_client() -> (
    aws_sdk_ec2::Client,
    aws_smithy_http_client::test_util::CaptureRequestReceiver,
) {
    let (http, rx) = capture_request(None);
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url("http://127.0.0.1:9")
        .http_client(http)
        .build();
    (aws_sdk_ec2::Client::from_conf(conf), rx)
}

/// The query parameters of a captured EC2 request.
fn params(
    rx: aws_smithy_http_client::test_util::CaptureRequestReceiver,
) -> BTreeMap<String, String> {
    let req = rx.expect_request();
    let body = req.body().bytes().expect("an in-memory body");
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The tags in `TagSpecification.1`, as key → value.
fn tag_spec(p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    (1..)
        .map_while(|n| {
            let k = p.get(&format!("TagSpecification.1.Tag.{n}.Key"))?;
            let v = p.get(&format!("TagSpecification.1.Tag.{n}.Value"))?;
            Some((k.clone(), v.clone()))
        })
        .collect()
}

const EUCALYPTUS_REJECTS: [&str; 6] = [
    "EnaSupport",
    "BootMode",
    "TpmSupport",
    "ImdsSupport",
    "TagSpecification",
    "SriovNetSupport",
];

#[tokio::test]
async fn aws_register_image_carries_the_snapshot_boot_mode_ena_imds_tpm_and_tags() {
    let opts = RegisterOptions::new(Destination::Ami(AmiSettings {
        tpm: true,
        ..AmiSettings::default()
    }));
    let spec = image_spec(&manifest("uefi"), &opts, None);
    let (ec2, rx) = capturing_client();
    let root = Root::Snapshot {
        snapshot_id: "snap-0123456789abcdef0".into(),
        volume_size_gib: 3,
    };
    let _ = ami::register_request(&ec2, Flavor::Aws, &spec, &root)
        .unwrap()
        .send()
        .await;
    let p = params(rx);
    let expect = [
        ("Action", "RegisterImage"),
        ("Name", "web-3.1.0-0123456789ab"),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        (
            "BlockDeviceMapping.1.Ebs.SnapshotId",
            "snap-0123456789abcdef0",
        ),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "3"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("EnaSupport", "true"),
        ("SriovNetSupport", "simple"),
        ("BootMode", "uefi"),
        ("ImdsSupport", "v2.0"),
        ("TpmSupport", "v2.0"),
        ("TagSpecification.1.ResourceType", "image"),
    ];
    for (k, v) in expect {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:#?}");
    }
    let tags = tag_spec(&p);
    assert_eq!(
        tags.get("imgforge:build-id").map(String::as_str),
        Some(BUILD)
    );
    assert_eq!(
        tags.get("imgforge:version").map(String::as_str),
        Some("3.1.0")
    );
    assert_eq!(tags.get("imgforge:base-id"), Some(&"a".repeat(64)));
    assert_eq!(tags.get("imgforge:bake-id"), Some(&"b".repeat(64)));
    assert_eq!(tags.get("imgforge:service-commit"), Some(&"c".repeat(40)));
    assert_eq!(tags.get("imgforge:data-sha256"), Some(&"d".repeat(64)));
}

#[tokio::test]
async fn bios_builds_say_legacy_bios_and_imds_can_be_left_optional() {
    let mut opts = RegisterOptions::new(Destination::Ami(AmiSettings {
        imds_v2: false,
        ..AmiSettings::default()
    }));
    let spec = image_spec(&manifest("bios"), &opts, None);
    let (ec2, rx) = capturing_client();
    let root = Root::Snapshot {
        snapshot_id: "snap-1".into(),
        volume_size_gib: 3,
    };
    let _ = ami::register_request(&ec2, Flavor::Aws, &spec, &root)
        .unwrap()
        .send()
        .await;
    let p = params(rx);
    assert_eq!(p.get("BootMode").map(String::as_str), Some("legacy-bios"));
    assert!(!p.contains_key("ImdsSupport"), "{p:#?}");
    assert!(!p.contains_key("TpmSupport"), "{p:#?}");

    // An explicit --boot-mode wins over the firmware.
    opts.boot_mode = Some(BootMode::UefiPreferred);
    let spec = image_spec(&manifest("bios"), &opts, None);
    let (ec2, rx) = capturing_client();
    let _ = ami::register_request(&ec2, Flavor::Aws, &spec, &root)
        .unwrap()
        .send()
        .await;
    assert_eq!(
        params(rx).get("BootMode").map(String::as_str),
        Some("uefi-preferred")
    );
}

#[tokio::test]
async fn eucalyptus_register_image_has_none_of_the_parameters_eucalyptus_rejects() {
    let opts = RegisterOptions::new(Destination::EmiSnapshot(SnapshotUpload::Direct));
    let mut spec = image_spec(&manifest("uefi"), &opts, None);
    assert!(!spec.tpm && !spec.imds_v2, "an EMI has no AMI settings");
    spec.tpm = true; // even if a spec asks for it, it is never sent to Eucalyptus

    // From a bundle.
    let (ec2, rx) = capturing_client();
    let root = Root::Bundle {
        location: "images/web-3.1.0-0123456789ab.manifest.xml".into(),
    };
    let _ = ami::register_request(&ec2, Flavor::Eucalyptus, &spec, &root)
        .unwrap()
        .send()
        .await;
    let p = params(rx);
    assert_eq!(
        p.get("ImageLocation").map(String::as_str),
        Some("images/web-3.1.0-0123456789ab.manifest.xml")
    );
    assert_eq!(p.get("Architecture").map(String::as_str), Some("x86_64"));
    assert_eq!(p.get("VirtualizationType").map(String::as_str), Some("hvm"));
    for key in p.keys() {
        assert!(
            !EUCALYPTUS_REJECTS.iter().any(|r| key.starts_with(r)),
            "{key} must not reach Eucalyptus: {p:#?}"
        );
    }

    // From a snapshot (--ebs).
    let (ec2, rx) = capturing_client();
    let root = Root::Snapshot {
        snapshot_id: "snap-2".into(),
        volume_size_gib: 3,
    };
    let _ = ami::register_request(&ec2, Flavor::Eucalyptus, &spec, &root)
        .unwrap()
        .send()
        .await;
    let p = params(rx);
    assert_eq!(
        p.get("BlockDeviceMapping.1.Ebs.SnapshotId")
            .map(String::as_str),
        Some("snap-2")
    );
    assert_eq!(
        p.get("RootDeviceName").map(String::as_str),
        Some("/dev/xvda")
    );
    for key in p.keys() {
        assert!(
            !EUCALYPTUS_REJECTS.iter().any(|r| key.starts_with(r)),
            "{key} must not reach Eucalyptus: {p:#?}"
        );
    }
}

#[tokio::test]
async fn import_snapshot_names_the_raw_object_and_tags_the_task() {
    let m = manifest("bios");
    let (ec2, rx) = capturing_client();
    let _ = import::import_request(
        &ec2,
        "my-bucket",
        "imgforge/build/web.raw",
        "web-3.1.0",
        &crate::cloud::tags::provenance(&m.provenance),
    )
    .send()
    .await;
    let p = params(rx);
    let expect = [
        ("Action", "ImportSnapshot"),
        ("DiskContainer.Format", "RAW"),
        ("DiskContainer.UserBucket.S3Bucket", "my-bucket"),
        ("DiskContainer.UserBucket.S3Key", "imgforge/build/web.raw"),
        ("TagSpecification.1.ResourceType", "import-snapshot-task"),
    ];
    for (k, v) in expect {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:#?}");
    }
    assert!(
        p.get("ClientToken").is_some_and(|t| t.len() == 32),
        "{p:#?}"
    );
    assert_eq!(
        tag_spec(&p).get("imgforge:build-id").map(String::as_str),
        Some(BUILD)
    );
}

#[tokio::test]
async fn a_new_launch_template_version_is_made_from_the_default_one() {
    // moto ignores SourceVersion (its new version holds only the image); AWS copies every
    // other setting from it, so the request must carry it.
    let (ec2, rx) = capturing_client();
    let _ = super::launch_template::new_version_request(&ec2, "lt-0123", 3, "ami-9", BUILD)
        .send()
        .await;
    let p = params(rx);
    let expect = [
        ("Action", "CreateLaunchTemplateVersion"),
        ("LaunchTemplateId", "lt-0123"),
        ("SourceVersion", "3"),
        ("LaunchTemplateData.ImageId", "ami-9"),
        ("VersionDescription", "imgforge build 0123456789ab"),
    ];
    for (k, v) in expect {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:#?}");
    }
    assert!(
        !p.keys()
            .any(|k| k.starts_with("LaunchTemplateData.") && k != "LaunchTemplateData.ImageId"),
        "only the image changes: {p:#?}"
    );
}
