//! The step after registration: a launch template whose default version launches the new
//! image, so that an Auto Scaling group (and `imgforge rotate`) picks it up without a
//! hand-edited template.

use crate::cloud::{sdk_error, tags};
use crate::events::{payload, Reporter};
use crate::layers::short;
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::operation::create_launch_template_version::builders::CreateLaunchTemplateVersionFluentBuilder;
use aws_sdk_ec2::types::{LaunchTemplateVersion, RequestLaunchTemplateData, Tag};
use serde::Serialize;

/// What `register --launch-template` did.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateUpdate {
    /// The launch template's id.
    pub launch_template_id: String,
    /// The default version, which launches the image.
    pub version: i64,
    /// The image it launches.
    pub image_id: String,
    /// The build the image holds.
    pub build_id: String,
    /// A version with this image was already there (no new version was made).
    pub reused: bool,
}

/// Makes the default version of launch template `name_or_id` (an `lt-…` id or a name) launch
/// `image_id`: a new version made from the default one (`SourceVersion`, so every other
/// setting is kept) with only the image changed, described and tagged with the build id, then
/// made the default. A version that already launches this image is made the default instead of
/// adding another, so registering a build twice adds one version.
pub async fn point_at_image(
    ec2: &aws_sdk_ec2::Client,
    name_or_id: &str,
    image_id: &str,
    build_id: &str,
    reporter: &Reporter,
) -> Result<TemplateUpdate> {
    reporter.phase("register: launch template");
    let versions = versions(ec2, name_or_id).await?;
    let template_id = versions
        .iter()
        .find_map(|v| v.launch_template_id())
        .with_context(|| format!("launch template {name_or_id} has no versions"))?
        .to_string();
    let launches_image = |v: &&LaunchTemplateVersion| {
        v.launch_template_data()
            .and_then(|d| d.image_id())
            .is_some_and(|i| i == image_id)
    };
    let (version, reused) = match versions.iter().find(launches_image) {
        Some(existing) => (existing.version_number().unwrap_or_default(), true),
        None => {
            let default = versions
                .iter()
                .find(|v| v.default_version() == Some(true))
                .and_then(|v| v.version_number())
                .with_context(|| format!("launch template {name_or_id} has no default version"))?;
            let made = new_version_request(ec2, &template_id, default, image_id, build_id)
                .send()
                .await
                .map_err(|e| sdk_error(e, "CreateLaunchTemplateVersion"))?;
            let number = made
                .launch_template_version()
                .and_then(|v| v.version_number())
                .context("CreateLaunchTemplateVersion returned no version number")?;
            (number, false)
        }
    };
    ec2.modify_launch_template()
        .launch_template_id(&template_id)
        .default_version(version.to_string())
        .send()
        .await
        .map_err(|e| sdk_error(e, "ModifyLaunchTemplate"))?;
    ec2.create_tags()
        .resources(&template_id)
        .tags(Tag::builder().key(tags::BUILD_ID).value(build_id).build())
        .send()
        .await
        .map_err(|e| sdk_error(e, "CreateTags (launch template)"))?;
    let update = TemplateUpdate {
        launch_template_id: template_id,
        version,
        image_id: image_id.to_string(),
        build_id: build_id.to_string(),
        reused,
    };
    reporter.emit(
        &format!(
            "launch template {} version {} (default{}) launches {image_id}",
            update.launch_template_id,
            update.version,
            if reused { ", already there" } else { ", new" }
        ),
        &payload::LaunchTemplateVersion {
            version: serde_json::to_value(&update)?,
        },
    );
    Ok(update)
}

/// The CreateLaunchTemplateVersion call: version `source` with only the image changed.
pub fn new_version_request(
    ec2: &aws_sdk_ec2::Client,
    template_id: &str,
    source: i64,
    image_id: &str,
    build_id: &str,
) -> CreateLaunchTemplateVersionFluentBuilder {
    ec2.create_launch_template_version()
        .launch_template_id(template_id)
        .source_version(source.to_string())
        .version_description(format!("imgforge build {}", short(build_id)))
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image_id)
                .build(),
        )
}

/// Every version of the launch template named `name_or_id`, all pages.
async fn versions(
    ec2: &aws_sdk_ec2::Client,
    name_or_id: &str,
) -> Result<Vec<LaunchTemplateVersion>> {
    let mut call = ec2.describe_launch_template_versions();
    call = match name_or_id.starts_with("lt-") {
        true => call.launch_template_id(name_or_id),
        false => call.launch_template_name(name_or_id),
    };
    let mut all = Vec::new();
    let mut pages = call.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            let missing = e.as_service_error().and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s))
                .is_some_and(|c| c.starts_with("InvalidLaunchTemplate"));
            match missing {
                true => anyhow::anyhow!(
                    "launch template {name_or_id} does not exist in this region; create it first, or pass another --launch-template"
                ),
                false => sdk_error(e, "DescribeLaunchTemplateVersions"),
            }
        })?;
        all.extend(page.launch_template_versions().iter().cloned());
    }
    if all.is_empty() {
        bail!("launch template {name_or_id} has no versions");
    }
    Ok(all)
}
