//! The one place errors become HTTP responses: `{"error":{"code","message"}}` like ARM.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::ModelError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// A failure whose code is only known at run time (a failed long-running operation).
    #[error("{message}")]
    Failed {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
        }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::CONFLICT,
            code,
            message: message.into(),
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        Self::bad_request(e.code, e.message)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        Self::internal(error_chain(&e))
    }
}

pub use control::error_chain;

impl From<control::CommandError> for ApiError {
    fn from(e: control::CommandError) -> Self {
        use control::CommandError as C;
        match e {
            C::Invalid { code, message } => Self::bad_request(code, message),
            C::NotFound { code, message } => Self::not_found(code, message),
            C::Conflict { code, message } => Self::conflict(code, message),
            C::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<control::ControlError> for ApiError {
    fn from(e: control::ControlError) -> Self {
        Self::internal(error_chain(&e))
    }
}

/// The CI service's errors (`/scaleset/...`).
impl From<ci::CiError> for ApiError {
    fn from(e: ci::CiError) -> Self {
        use ci::CiError as C;
        use pipeline::git::GitError;
        let message = e.to_string();
        match e {
            C::NoRepository(_) => Self::not_found("RepositoryNotFound", message),
            C::RepositoryExists(_) => Self::conflict("RepositoryExists", message),
            C::Mirror(GitError::Git(m)) => Self::bad_request("InvalidMirror", m),
            C::Git(g) | C::Mirror(g) => git_error(g),
            C::MirrorFetch(_) => Self::Client {
                status: StatusCode::BAD_GATEWAY,
                code: "MirrorFetchFailed",
                message,
            },
            C::NoPipeline(_) => Self::not_found("PipelineNotFound", message),
            C::NoBranch { .. } => Self::bad_request("BranchNotFound", message),
            C::NoRun(_) => Self::not_found("RunNotFound", message),
            C::RunCompleted(_) => Self::conflict("RunCompleted", message),
            C::Runs(_) | C::Internal(_) => Self::Internal(message),
            C::Create { .. } | C::AzureProvider(_) | C::UnknownProvider(_) => {
                Self::internal(error_chain(&e))
            }
        }
    }
}

/// A repository operation's error: a missing repository, a bad name, or the daemon's fault.
fn git_error(e: pipeline::git::GitError) -> ApiError {
    let m = e.to_string();
    if matches!(e, pipeline::git::GitError::NotFound(_)) {
        ApiError::not_found("RepositoryNotFound", m)
    } else if m.contains("invalid") || m.contains("name") {
        ApiError::bad_request("InvalidRepositoryName", m)
    } else {
        ApiError::internal(m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Client {
                status,
                code,
                message,
            } => (status, code.to_string(), message),
            ApiError::Failed {
                status,
                code,
                message,
            } => (status, code, message),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError".to_string(),
                    m,
                )
            }
        };
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    }
}

impl From<crate::ui::session::Denied> for ApiError {
    fn from(e: crate::ui::session::Denied) -> Self {
        use crate::ui::session::Denied as D;
        let (status, code) = match e {
            D::NoSession => (StatusCode::UNAUTHORIZED, "AuthenticationFailed"),
            D::UnknownOnce => (StatusCode::FORBIDDEN, "InvalidSignInLink"),
            D::MissingCsrf | D::BadCsrf => (StatusCode::FORBIDDEN, "InvalidCsrfToken"),
        };
        ApiError::Client {
            status,
            code,
            message: e.to_string(),
        }
    }
}
