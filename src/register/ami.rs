//! RegisterImage for AWS AMIs and Eucalyptus EMIs, the build-id lookup that makes registration
//! idempotent, and what follows registration (tags, waiting, region copies, launch permissions).

use super::Progress;
use crate::cloud::sdk_error;
use anyhow::{anyhow, bail, Result};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter,
    ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, ResourceType, Tag,
    TagSpecification, TpmSupportValues, VolumeType,
};
use std::time::Duration;

/// The root device every imgforge image boots from.
pub const ROOT_DEVICE: &str = "/dev/xvda";

/// Which cloud receives the RegisterImage call; Eucalyptus rejects several AWS parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// AWS EC2: ENA, SR-IOV, boot mode, IMDS, TPM and tags in the request.
    Aws,
    /// Eucalyptus: none of EnaSupport, BootMode, TpmSupport, ImdsSupport, TagSpecifications.
    Eucalyptus,
}

/// The boot mode an image declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// BIOS.
    LegacyBios,
    /// UEFI.
    Uefi,
    /// UEFI where the instance type supports it, else BIOS.
    UefiPreferred,
}

impl std::str::FromStr for BootMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "legacy-bios" => Ok(BootMode::LegacyBios),
            "uefi" => Ok(BootMode::Uefi),
            "uefi-preferred" => Ok(BootMode::UefiPreferred),
            _ => Err(format!("`{s}`: use legacy-bios, uefi or uefi-preferred")),
        }
    }
}

impl BootMode {
    fn value(self) -> BootModeValues {
        match self {
            BootMode::LegacyBios => BootModeValues::LegacyBios,
            BootMode::Uefi => BootModeValues::Uefi,
            BootMode::UefiPreferred => BootModeValues::UefiPreferred,
        }
    }
}

/// What the image is registered from.
#[derive(Debug, Clone)]
pub enum Root {
    /// An EBS snapshot of the root volume.
    Snapshot {
        /// Snapshot id.
        snapshot_id: String,
        /// Root volume size in GiB.
        volume_size_gib: i32,
    },
    /// An S3 bundle: `bucket/prefix.manifest.xml`.
    Bundle {
        /// The manifest's location.
        location: String,
    },
}

/// Everything RegisterImage is told about the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Image name (unique per account and region).
    pub name: String,
    /// Description.
    pub description: String,
    /// `x86_64`.
    pub arch: String,
    /// Boot mode (AWS only).
    pub boot_mode: BootMode,
    /// Ask for IMDSv2 only (AWS only).
    pub imds_v2: bool,
    /// Attach a TPM 2.0 (AWS only; needs UEFI).
    pub tpm: bool,
    /// Tags for the image.
    pub tags: Vec<(String, String)>,
}

impl ImageSpec {
    /// Rejects combinations AWS would refuse, before anything is uploaded.
    pub fn validate(&self) -> Result<()> {
        if self.tpm && self.boot_mode == BootMode::LegacyBios {
            bail!("a TPM 2.0 needs UEFI but the image boots with legacy BIOS: drop --tpm or pass --boot-mode uefi");
        }
        Ok(())
    }
}

/// Builds the RegisterImage request for `spec` and `root` on `flavor`, unsent.
pub fn register_request(
    ec2: &aws_sdk_ec2::Client,
    flavor: Flavor,
    spec: &ImageSpec,
    root: &Root,
) -> Result<RegisterImageFluentBuilder> {
    let mut req = ec2
        .register_image()
        .name(&spec.name)
        .description(&spec.description)
        .architecture(ArchitectureValues::from(spec.arch.as_str()))
        .virtualization_type("hvm");
    match root {
        Root::Snapshot {
            snapshot_id,
            volume_size_gib,
        } => {
            req = req.root_device_name(ROOT_DEVICE).block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(ROOT_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(snapshot_id)
                            .volume_size(*volume_size_gib)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        Root::Bundle { location } => req = req.image_location(location),
    }
    if flavor == Flavor::Eucalyptus {
        return Ok(req);
    }
    spec.validate()?;
    req = req
        .ena_support(true)
        .sriov_net_support("simple")
        .boot_mode(spec.boot_mode.value());
    if spec.imds_v2 {
        req = req.imds_support(ImdsSupportValues::V20);
    }
    if spec.tpm {
        req = req.tpm_support(TpmSupportValues::V20);
    }
    if !spec.tags.is_empty() {
        req = req.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(ec2_tags(&spec.tags)))
                .build(),
        );
    }
    Ok(req)
}

/// EC2 tags from key/value pairs.
pub fn ec2_tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// The images of ours tagged with `build_id` (owner self), not deregistered or failed.
pub async fn find_existing(ec2: &aws_sdk_ec2::Client, build_id: &str) -> Result<Vec<String>> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name(format!("tag:{}", crate::cloud::tags::BUILD_ID))
                .values(build_id)
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error(e, "EC2 DescribeImages"))?;
    Ok(out
        .images
        .unwrap_or_default()
        .into_iter()
        .filter(|i| {
            !matches!(
                i.state.as_ref().map(|s| s.as_str()),
                Some("deregistered" | "failed" | "error")
            )
        })
        .filter_map(|i| i.image_id)
        .collect())
}

/// Registers the image, tags it (and its snapshot), and waits until it is `available`.
/// If registration fails after an image id was returned, the image is deregistered.
pub async fn register(
    ec2: &aws_sdk_ec2::Client,
    flavor: Flavor,
    spec: &ImageSpec,
    root: &Root,
    wait: Duration,
    progress: &Progress<'_>,
) -> Result<String> {
    let image_id = register_request(ec2, flavor, spec, root)?
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("EC2 RegisterImage `{}`", spec.name)))?
        .image_id
        .ok_or_else(|| anyhow!("RegisterImage returned no image id"))?;
    let finish = async {
        // Tags again with CreateTags: Eucalyptus rejects TagSpecifications, and some
        // EC2-compatible endpoints ignore them.
        let mut resources = vec![image_id.clone()];
        if let Root::Snapshot { snapshot_id, .. } = root {
            resources.push(snapshot_id.clone());
        }
        ec2.create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(ec2_tags(&spec.tags)))
            .send()
            .await
            .map_err(|e| sdk_error(e, &format!("EC2 CreateTags on {image_id}")))?;
        ec2.wait_until_image_available()
            .image_ids(&image_id)
            .wait(wait)
            .await
            .map_err(|e| {
                anyhow!(
                    "image {image_id} did not become `available` within {wait:?}: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(e)
                )
            })?;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = finish.await {
        progress.println(&format!("deregistering {image_id}, which did not come up"));
        if let Err(d) = ec2.deregister_image().image_id(&image_id).send().await {
            progress.println(&format!(
                "warning: could not deregister {image_id}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(d)
            ));
        }
        return Err(e);
    }
    Ok(image_id)
}

/// Gives `accounts` launch permission on `image_id`.
pub async fn share(ec2: &aws_sdk_ec2::Client, image_id: &str, accounts: &[String]) -> Result<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let mut perms = LaunchPermissionModifications::builder();
    for a in accounts {
        perms = perms.add(LaunchPermission::builder().user_id(a).build());
    }
    ec2.modify_image_attribute()
        .image_id(image_id)
        .launch_permission(perms.build())
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("EC2 ModifyImageAttribute (share {image_id})")))?;
    Ok(())
}

/// Copies `image_id` from `source_region` into `region` unless that region already holds an
/// image of `build_id`; returns the regional image id and whether a copy was started.
pub async fn copy_to(
    config: &aws_config::SdkConfig,
    source_region: &str,
    region: &str,
    image_id: &str,
    spec: &ImageSpec,
    build_id: &str,
) -> Result<(String, bool)> {
    let regional = config
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    let ec2 = aws_sdk_ec2::Client::new(&regional);
    if let Some(existing) = find_existing(&ec2, build_id).await?.into_iter().next() {
        return Ok((existing, false));
    }
    let copy_id = ec2
        .copy_image()
        .source_region(source_region)
        .source_image_id(image_id)
        .name(&spec.name)
        .description(&spec.description)
        .copy_image_tags(true)
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("EC2 CopyImage {image_id} to {region}")))?
        .image_id
        .ok_or_else(|| anyhow!("CopyImage to {region} returned no image id"))?;
    // Tagged explicitly as well: not every EC2-compatible cloud honours CopyImageTags, and the
    // build-id tag is how the next run finds this copy instead of copying again.
    ec2.create_tags()
        .resources(&copy_id)
        .set_tags(Some(ec2_tags(&spec.tags)))
        .send()
        .await
        .map_err(|e| sdk_error(e, &format!("EC2 CreateTags on {copy_id} in {region}")))?;
    Ok((copy_id, true))
}
