//! What wraps every request: its request id (taken from `X-Request-Id` when sane, else
//! generated; echoed on every answer and carried into the AMQP headers, so the worker's log
//! lines of a transaction carry it too), and its entry in the HTTP metrics (by route
//! pattern, never the raw path).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};
use std::time::Instant;
use tally_telemetry::metrics;
use tracing::Instrument;
use uuid::Uuid;

/// The same name as the AMQP header the id travels in.
const HEADER: &str = tally_bus::headers::REQUEST_ID;

/// The id of the request being served (a request extension, set by [`observe`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id [`observe`] gave `req`; a fresh one if the middleware is not installed.
    pub fn of(req: &HttpRequest) -> String {
        req.extensions()
            .get::<RequestId>()
            .map_or_else(|| Uuid::new_v4().to_string(), |id| id.0.clone())
    }
}

/// The caller's id when it is a sane identifier — the charset of transaction ids, which is
/// also what nginx keeps (nginx/local.conf.template) — else a fresh UUID.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| tally_core::validate_id(v).is_ok())
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_string)
}

/// Arbitrary extension methods would make the label unbounded.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The middleware (`App::wrap(from_fn(observe))`).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let method = method_label(req.method());
    req.extensions_mut().insert(RequestId(id.clone()));
    // The handler's own log lines (a failed publish, a 5xx cause) carry the id too, and the
    // name of the API key once `crate::auth::authenticate` has checked it.
    let span = tracing::info_span!("request", request_id = %id, key = tracing::field::Empty);
    let result = next.call(req).instrument(span).await;
    let (route, status) = match &result {
        Ok(res) => (res.request().match_pattern(), res.status().as_u16()),
        // Handlers' errors are already responses; this is a failure below them.
        Err(e) => (None, e.as_response_error().status_code().as_u16()),
    };
    metrics::http_request(
        route.as_deref().unwrap_or(metrics::UNMATCHED_ROUTE),
        method,
        status,
        started.elapsed(),
    );
    let mut res = result?;
    // Validated above (visible ASCII) or a UUID: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    Ok(res)
}
