//! Counting the cloud API calls a command makes (every attempt, retries included), through an
//! SDK interceptor, so the summary and the benchmark can report them.

use aws_config::SdkConfig;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A shared counter of API call attempts by operation; clone it freely.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls(Arc<Mutex<BTreeMap<String, u64>>>);

/// The SDK clients rotate and prune use, each counting its calls.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// MaxResults per DescribeInstances page.
    pub page_size: i32,
}

impl ApiCalls {
    /// Clients built from `sdk` that report their calls to this counter, asking for
    /// `page_size` instances per DescribeInstances page.
    pub fn clients(&self, sdk: &SdkConfig, page_size: i32) -> Clients {
        let ec2 = aws_sdk_ec2::config::Builder::from(sdk)
            .interceptor(self.clone())
            .build();
        let asg = aws_sdk_autoscaling::config::Builder::from(sdk)
            .interceptor(self.clone())
            .build();
        Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            asg: aws_sdk_autoscaling::Client::from_conf(asg),
            page_size,
        }
    }

    /// Total attempts so far.
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }

    /// Attempts by operation, as a JSON object (`{"DescribeInstances": 3, …}`).
    pub fn by_operation(&self) -> Value {
        json!(*self.0.lock().unwrap())
    }
}

impl Intercept for ApiCalls {
    fn name(&self) -> &'static str {
        "imgforge::ApiCalls"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
        Ok(())
    }
}
