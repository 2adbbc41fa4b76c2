//! What a command message carries besides its body, named once: the properties every
//! publisher sets ([`command_properties`]) and the headers the consumer side reads back.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// The request id header: the API's `X-Request-Id` carried into the AMQP headers, so the
/// worker's log lines of a transaction carry the id the client saw. The HTTP header has the
/// same name on purpose (one id, one name, across processes).
pub const REQUEST_ID: &str = "x-request-id";

/// The broker's record of why and where a message was dead-lettered.
pub(crate) const DEATH: &str = "x-death";

/// Properties of a command message, whoever publishes it (the API, `tally import`):
/// `message_id` is the transaction id, and [`REQUEST_ID`] traces it across processes.
pub fn command_properties(id: &str, request_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(REQUEST_ID.into(), AMQPValue::LongString(request_id.into()));
    BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// Properties of a re-published dead letter (`tally-worker dead-letters republish`, the API's
/// `POST /debug/dead-letters/{id}/republish`): its original message id, so the worker dedupes
/// it like any copy. The archive keeps no headers, so the original request id is lost; no
/// content type either, as the body may be the garbage that got it dead-lettered.
pub fn republish_properties(message_id: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default();
    match message_id {
        Some(id) => properties.with_message_id(id.into()),
        None => properties,
    }
}

/// A text value of a header table (long or short string), lossy on invalid UTF-8.
pub(crate) fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The request id a message carries, if any, read in place (no copy per message).
pub(crate) fn request_id(properties: &BasicProperties) -> Option<&str> {
    match properties.headers().as_ref()?.inner().get(REQUEST_ID)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}
