//! Errors as `application/problem+json` (RFC 9457) with weir's stable `code`, every problem of
//! a validation at once in `errors`, and the request id as `instance`. Internal failures are
//! logged with the request id; the caller gets a generic message and the id to quote.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use weir_api::ErrorCode;
use weir_api::rest::ProblemField;

tokio::task_local! {
    /// The id of the request being handled.
    pub(crate) static REQUEST_ID: String;
}

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: ErrorCode,
    detail: String,
    errors: Vec<ProblemField>,
    retry_after: Option<std::time::Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with `code` and a message for people.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// When to retry, for `429` and `503` (`Retry-After`, in whole seconds rounded up; 1 s
    /// when not set).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Adds the individual problems.
    pub fn with_errors(mut self, errors: Vec<ProblemField>) -> Self {
        self.errors = errors;
        self
    }

    /// A resource that does not exist for the caller (missing, or another tenant's).
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// A failure of weir itself: logged in full, reported generically.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        let id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        tracing::error!(request_id = %id, error = %error, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; quote the request id when reporting it",
        )
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidModule | ErrorCode::InvalidGraph | ErrorCode::InvalidDeployment => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::QuotaExceeded | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::ArtifactMissing => StatusCode::CONFLICT,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
    instance: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [ProblemField],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code.as_str();
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let problem = Problem {
            kind: format!("https://weir.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            code,
            detail: &self.detail,
            instance: format!("urn:weir:request:{request_id}"),
            errors: &self.errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self.code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
            // RFC 9110 §10.2.3: whole seconds; a wait under one second rounds up to one.
            let seconds = self.retry_after.map_or(1, |wait| {
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            });
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<weir_store::StoreError> for ApiError {
    fn from(error: weir_store::StoreError) -> Self {
        match error.code() {
            ErrorCode::Internal => Self::internal(&error),
            code => Self::new(code, error.to_string()),
        }
    }
}

impl From<weir_tenants::AuthError> for ApiError {
    fn from(error: weir_tenants::AuthError) -> Self {
        match error.code() {
            // Which check failed is not the caller's business.
            ErrorCode::Unauthenticated => Self::new(
                ErrorCode::Unauthenticated,
                "a valid bearer token is required",
            ),
            code => Self::new(code, error.to_string()),
        }
    }
}

/// A JSON body whose rejections are problem documents too.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected content-type application/json",
            )),
            Err(JsonRejection::BytesRejection(rejection))
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body too large",
                ))
            }
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                rejection.body_text(),
            )),
        }
    }
}

/// A query string whose rejections are problem documents too.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                rejection.body_text(),
            )),
        }
    }
}
