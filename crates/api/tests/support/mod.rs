//! Test support shared by the API tests (and, by path, the CLI tests).
pub mod swagger;
