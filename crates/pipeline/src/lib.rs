//! Azure Pipelines YAML: parsing, expressions, conditions, and the run plan.
