//! The `azure` provider: the same verbs against a real subscription through Azure Resource
//! Manager. Pure decisions ([`retry`], [`lro`], the choices in [`credential`] and [`ops`]) are
//! plain functions (and [`create`], the bodies the create verbs send; [`deploy`], template deployments); the network and processes sit behind [`transport::Transport`] and
//! [`credential::Credential`].
pub mod blob;
pub mod client;
pub mod create;
pub mod credential;
pub mod deploy;
pub mod error;
pub mod lro;
pub mod ops;
pub mod retry;
pub mod tasks;
pub mod transport;

pub use client::ArmClient;
pub use error::AzureError;
pub use ops::Azure;
