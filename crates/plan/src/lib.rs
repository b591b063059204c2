//! Pure decisions of the control plane: what to do to bring observed state to the desired model.
//! Plain functions over plain data; no I/O, no clock, no tokio. The daemon observes, calls these,
//! and carries out the returned actions; each action is idempotent so a crash between deciding and
//! doing is repaired by deciding again. `metrics` is the same kind of code for the engine's host
//! metrics: readings in, Azure's per-grain values out.

pub mod app_health;
pub mod autoscale;
pub mod metrics;
pub mod naming;
pub mod reconcile;
pub mod repairs;
pub mod rolling;
pub mod scale_in;

pub use reconcile::{reconcile, Action, Desired, InstanceState, Observed, PowerIntent};
