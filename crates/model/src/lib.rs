//! Azure Resource Manager resource model for what scaleset implements: scale sets, their
//! instances, load balancers, images, autoscale settings and the host metrics of scale sets
//! (`metrics`). Pure: parsing, validation, defaults, ids and az's generic `--set` update. No I/O.

pub mod autoscale;
pub mod error;
pub mod export;
pub mod ids;
pub mod lb;
pub mod lb_child;
pub mod metrics;
pub mod names;
pub mod run_command;
pub mod setpath;
pub mod sizes;
pub mod timezone;
pub mod vmss;

pub use error::ModelError;

/// API versions we accept, per resource provider (the ones Microsoft's specs in shared/ describe).
pub const COMPUTE_API_VERSIONS: &[&str] = &[
    "2024-11-01",
    "2024-07-01",
    "2024-03-01",
    "2023-09-01",
    "2023-03-01",
    "2022-11-01",
];
pub const NETWORK_API_VERSIONS: &[&str] = &[
    "2024-05-01",
    "2024-03-01",
    "2024-01-01",
    "2023-11-01",
    "2023-09-01",
];
/// Microsoft.Insights autoscalesettings.
pub const AUTOSCALE_API_VERSIONS: &[&str] = &["2022-10-01"];
/// Microsoft.Resources: 2025-04-01 is the spec in shared/ and azure-mgmt-resource 26's default;
/// 2021-04-01 is what our CLI sends.
pub const RESOURCES_API_VERSIONS: &[&str] = &[
    "2025-04-01",
    "2024-11-01",
    "2024-03-01",
    "2022-09-01",
    "2021-04-01",
    "2020-06-01",
];
/// Azure Monitor's (`Microsoft.Insights/metrics`, `metricDefinitions`).
pub const MONITOR_API_VERSIONS: &[&str] = &["2024-02-01", "2023-10-01", "2021-05-01", "2018-01-01"];
pub const DEFAULT_LOCATION: &str = "local";
