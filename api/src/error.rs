use serde::{Deserialize, Serialize};

/// Who is at fault when something fails; decides what the caller is told and whether a retry
/// can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorDomain {
    /// The request or the tenant's artifact is wrong; retrying the same thing fails again.
    User,
    /// A service weir depends on failed; a retry may succeed.
    External,
    /// weir itself failed; details are logged, the caller gets a request id.
    Internal,
}

/// The stable codes of weir's errors, as they appear in problem documents and dead letters.
/// Codes are part of the API: add new ones, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request itself is malformed: unparsable body, invalid field.
    InvalidRequest,
    /// A module is not a component weir can run.
    InvalidModule,
    /// A graph definition failed validation.
    InvalidGraph,
    /// A deployment cannot be built from its graph, modules and configuration.
    InvalidDeployment,
    /// A tenant quota was reached.
    QuotaExceeded,
    /// The resource does not exist, or belongs to someone else.
    NotFound,
    /// The request conflicts with the resource's current state.
    Conflict,
    /// An artifact (graph or module version) a request needs was deleted: a rollback to a
    /// revision whose artifacts are gone.
    ArtifactMissing,
    /// No valid credentials.
    Unauthenticated,
    /// Credentials valid but the role does not allow this.
    Forbidden,
    /// The body is over its size limit.
    PayloadTooLarge,
    /// The body's media type is not accepted here.
    UnsupportedMediaType,
    /// Too many requests; retry after the advertised delay.
    RateLimited,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// A dependency failed.
    Unavailable,
    /// weir failed.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidModule => "invalid_module",
            Self::InvalidGraph => "invalid_graph",
            Self::InvalidDeployment => "invalid_deployment",
            Self::QuotaExceeded => "quota_exceeded",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::ArtifactMissing => "artifact_missing",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Whose fault an error with this code is.
    pub fn domain(self) -> ErrorDomain {
        match self {
            Self::Unavailable => ErrorDomain::External,
            Self::Internal => ErrorDomain::Internal,
            _ => ErrorDomain::User,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde_names() {
        for code in [
            ErrorCode::InvalidModule,
            ErrorCode::QuotaExceeded,
            ErrorCode::RateLimited,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
