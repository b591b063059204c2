//! The one error type of the provider. Azure's own errors keep their `code` and `message` so the
//! CLI prints them as az does: `(Code) message`.
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureError {
    /// ARM answered with an error status and (usually) a `{"error":{"code","message"}}` body.
    #[error("({code}) {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// A long-running operation ended Failed or Canceled.
    #[error("({code}) {message}")]
    Operation {
        status: String,
        code: String,
        message: String,
    },
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("cannot get an Azure access token: {0}")]
    Credential(String),
    /// The provider is not set up (a missing or malformed setting).
    #[error("{0}")]
    Config(String),
    #[error("unexpected response from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("refusing to send the access token to {0}: not the ARM endpoint")]
    ForeignHost(String),
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

impl AzureError {
    /// The HTTP status of an API error (404 lets callers treat "not found" as absence).
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An error status and body as ARM sends them: `{"error":{"code","message"}}`, or the
    /// older unwrapped `{"code","message"}`; anything else keeps the status as its message.
    pub fn from_response(status: u16, body: &[u8]) -> AzureError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (code, message) = error_fields(v.get("error").unwrap_or(&v));
        let text = String::from_utf8_lossy(body);
        AzureError::Api {
            status,
            code: code.unwrap_or_else(|| format!("HttpStatus{status}")),
            message: message.unwrap_or_else(|| {
                if text.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", truncate(text.trim(), 300))
                }
            }),
        }
    }
}

/// `code` and `message` of an ARM error object.
pub(crate) fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    (s("code"), s("message"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"error":{"code":"ResourceNotFound","message":"not here"}}"#,
                "(ResourceNotFound) not here",
            ),
            (
                br#"{"code":"Conflict","message":"busy"}"#,
                "(Conflict) busy",
            ),
            (b"", "(HttpStatus404) HTTP 404"),
            (
                b"<html>oops</html>",
                "(HttpStatus404) HTTP 404: <html>oops</html>",
            ),
        ];
        for (body, want) in cases {
            let e = AzureError::from_response(404, body);
            assert_eq!(e.to_string(), *want);
            assert_eq!(e.status(), Some(404));
        }
    }
}
