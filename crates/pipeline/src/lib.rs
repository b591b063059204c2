//! Azure Pipelines YAML: parsing, expressions, conditions, and the run plan.

pub mod error;
pub mod exec;
pub mod yaml;

pub use error::{Pos, YamlError};
pub mod expr;
pub mod model;
pub mod parse;
pub mod plan;
pub mod trigger;
pub mod vars;

pub use model::*;
pub use parse::{compile, parse_pipeline};
