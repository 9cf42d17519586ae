//! Cloud commands without credentials or region: each says what to set, once, and sends
//! nothing.

mod common;

use common::{imgforge, run, CountingEndpoint};

/// Runs imgforge with an environment that holds no AWS credentials, profile or region.
fn without_credentials(args: &[&str], region: bool) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let endpoint = CountingEndpoint::start();
    let mut cmd = imgforge();
    cmd.args(args)
        .args(["--endpoint-url", &endpoint.endpoint])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("no-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if region {
        cmd.args(["--region", "us-east-1"]);
    }
    let outcome = run(&mut cmd);
    assert_eq!(endpoint.connections(), 0, "a request was sent: {outcome:?}");
    outcome
}

#[test]
fn rotate_and_prune_name_the_missing_credentials_and_region_once() {
    for args in [
        &["rotate", "--max-age", "30d", "--image-name", "web"][..],
        &["prune", "--image-name", "web"][..],
    ] {
        let (code, out, err) = without_credentials(args, true);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("no AWS credentials found") && err.contains("AWS_ACCESS_KEY_ID"),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("no AWS credentials found").count(), 1, "{err}");
        assert!(err.lines().count() <= 3, "{args:?}: a short message: {err}");

        let (code, _out, err) = without_credentials(args, false);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("no AWS region") && err.contains("AWS_REGION"),
            "{err}"
        );
    }
}
