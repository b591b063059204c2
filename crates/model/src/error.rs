use thiserror::Error;

/// A client error with an Azure error code. The API maps it to HTTP 400/404/409 with
/// `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ModelError {
    pub code: &'static str,
    pub message: String,
}

impl ModelError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidParameter", message)
    }
    pub fn out_of_range(field: &str, value: impl std::fmt::Display, lo: i64, hi: i64) -> Self {
        Self::invalid(format!(
            "The value {value} of parameter '{field}' is out of range. The value must be between {lo} and {hi}, inclusive."
        ))
    }
}
