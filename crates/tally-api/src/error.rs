//! [`ApiError`]: every way a request can fail, with a stable `code`. 4xx answers say what was
//! wrong with the request and change nothing; 5xx answers never echo internals, but log the
//! cause chain.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use std::fmt;
use tally_core::command::FieldError;
use tally_core::Reason;

use crate::model::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed; `field` names the culprit when there is one.
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<&'static str>,
    },
    /// 401: a protected route without a valid API key (or, with auth off, the debug token).
    Unauthorized,
    /// 403: a valid API key without the scope the route needs.
    Forbidden { message: String },
    /// 404.
    NotFound { code: &'static str, message: String },
    /// 405: the path exists, the method does not; `allow` lists the methods that do.
    MethodNotAllowed { method: String, allow: String },
    /// 409: the request conflicts with the resource's current state (e.g. a job not finished).
    Conflict { code: &'static str, message: String },
    /// 422: well-formed, but refused by a business rule (e.g. another user owns the account).
    Unprocessable { code: &'static str, message: String },
    /// 422: the idempotency key is already used with another payload.
    IdReused,
    /// 429: a bounded queue is full (e.g. settlement jobs); retry after `Retry-After`.
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
    /// 503 with its own code: a bounded resource (e.g. settlement downloads) is at capacity;
    /// retry after `Retry-After`.
    Busy {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
    /// 503 `unavailable`: surely nothing was accepted; retry later with the same id.
    Unavailable {
        message: &'static str,
        retry_after_secs: u32,
    },
    /// 503 `outcome_unknown`: the command may have been accepted (sent to the broker, not
    /// confirmed); a retry with the same id, or `GET /transactions/{id}`, tells the truth.
    OutcomeUnknown {
        message: &'static str,
        retry_after_secs: u32,
    },
    /// 409 with its own code: the resource is not yet in the state the request asks for
    /// (an account below `minSeq`) after the bounded wait; nothing is wrong, retry after
    /// `Retry-After`. Not a 5xx: it is no failure of ours (and a 504 would read as nginx's
    /// upstream timeout).
    NotYet {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
    /// 500: a bug or an unexpected failure; the cause is logged, not returned.
    Internal(String),
}

impl ApiError {
    pub fn bad_request(
        code: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn internal(context: &str, cause: &dyn std::error::Error) -> Self {
        let mut chain = format!("{context}: {cause}");
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        ApiError::Internal(chain)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest {
            code: e.code,
            message: e.message,
            field: Some(e.field),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadRequest { message, .. }
            | ApiError::NotFound { message, .. }
            | ApiError::Conflict { message, .. }
            | ApiError::Unprocessable { message, .. }
            | ApiError::TooManyRequests { message, .. }
            | ApiError::Busy { message, .. }
            | ApiError::NotYet { message, .. }
            | ApiError::Forbidden { message } => f.write_str(message),
            ApiError::Unauthorized => f.write_str("missing or wrong bearer token"),
            ApiError::MethodNotAllowed { method, allow } => {
                write!(f, "{method} is not allowed here; allowed: {allow}")
            }
            ApiError::IdReused => {
                f.write_str("this id was already used for a transaction with another payload")
            }
            ApiError::Unavailable { message, .. } | ApiError::OutcomeUnknown { message, .. } => {
                f.write_str(message)
            }
            ApiError::Internal(_) => f.write_str("internal error"),
        }
    }
}

/// Response header carrying the error's `code` on every error answer.
pub const ERROR_HEADER: &str = "x-tally-error";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy { .. }
            | ApiError::Unavailable { .. }
            | ApiError::OutcomeUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotYet { .. } => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            ApiError::BadRequest { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooManyRequests { code, .. }
            | ApiError::Busy { code, .. }
            | ApiError::NotYet { code, .. } => *code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::IdReused => Reason::IdReused.as_str(),
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "internal"
            }
        };
        let field = match self {
            ApiError::BadRequest { field, .. } => *field,
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                field,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        // The code again as a header: nginx rebuilds a 503 of `POST /transaction` from it
        // (nginx/*.conf, @transaction_503) without parsing the body.
        response.insert_header((ERROR_HEADER, code));
        if let ApiError::Unavailable {
            retry_after_secs, ..
        }
        | ApiError::OutcomeUnknown {
            retry_after_secs, ..
        }
        | ApiError::TooManyRequests {
            retry_after_secs, ..
        }
        | ApiError::Busy {
            retry_after_secs, ..
        }
        | ApiError::NotYet {
            retry_after_secs, ..
        } = self
        {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((header::ALLOW, allow.as_str()));
        }
        if let ApiError::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}
