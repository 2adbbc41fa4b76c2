//! The OpenAPI document of the API, generated from the code: the operations from the
//! `#[utoipa::path]` of each handler as [`crate::routes::configure`] registers it, the schemas
//! from the types in [`crate::model`], and here what the handlers do not say themselves (the
//! API's description, tags, the shared primitive schemas and error responses).
//!
//! `openapi.json` at the repository root is this document as `tally-api openapi` prints it
//! (`make openapi` writes it); a test fails when the committed file differs. Nothing reads
//! the document at run time.

use actix_web::App;
use serde_json::json;
use tally_core::auth::{required, Access};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};
use utoipa_actix_web::AppExt;

use crate::model;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        version = "0.1.0",
        description = include_str!("openapi/description.md"),
        license(name = "See the repository"),
    ),
    servers((url = "http://localhost:8000", description = "Default local address (`api.host`, `api.port`).")),
    tags(
        (name = "transactions", description = "Posting commands and reading their recorded outcomes."),
        (name = "accounts", description = "Balances."),
        (name = "health", description = "Liveness, readiness and component status."),
        (name = "metrics", description = "Prometheus metrics (text format) of the replica that answers."),
        (name = "debug", description = "Operator table dumps. Only served when `debug.enabled` is true (otherwise these paths answer 404 `not_found`); they need an `admin` API key."),
        (name = "users", description = "Users own accounts: a total over them, explicit links, largest expense."),
        (name = "jobs", description = "Settlement jobs, run by the workers: queue, watch, cancel, download."),
        (name = "webhooks", description = "Balance webhooks: after each balance change of an account, a signed POST of its new state to the registered URL, delivered by the workers."),
    ),
    components(
        schemas(
            Identifier, Money, PositiveMoney, AmountInput, model::TransactionType,
            model::NewTransaction, model::WebhookPayload,
        ),
        responses(Unavailable, Internal, BadPath, BadPage, BadPeriod, BadJobId, JobNotFound, Unauthorized, Forbidden),
    ),
    modifiers(&Shared),
)]
struct ApiDoc;

/// The whole document: [`ApiDoc`] and every operation the router registers (debug routes
/// included), each with the API key scope it needs.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, registered) = App::new()
        .into_utoipa_app()
        .configure(|cfg| crate::routes::configure(cfg, true))
        .split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(registered);
    secure(&mut doc);
    doc
}

/// The name of the bearer scheme of API keys in the document.
const API_KEY: &str = "apiKey";

/// Writes on every operation what [`tally_core::auth::required`] asks of it (the same table
/// the middleware enforces, with the default `auth.public_metrics`): a security requirement
/// naming the scope, and the 401 and 403 answers. Public operations (the probes, `/metrics`)
/// get none.
fn secure(doc: &mut utoipa::openapi::OpenApi) {
    let public_metrics = true;
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
            ("HEAD", &mut item.head),
            ("OPTIONS", &mut item.options),
            ("TRACE", &mut item.trace),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let access = required(method, Some(path), public_metrics);
            let scopes: Vec<&str> = match access {
                Access::Public => continue,
                Access::AnyKey => vec![],
                Access::Scope(scope) => vec![scope.as_str()],
            };
            operation.security = Some(vec![SecurityRequirement::new(API_KEY, scopes)]);
            let responses = &mut operation.responses.responses;
            let shared = |name: &str| RefOr::Ref(Ref::from_response_name(name));
            responses.insert("401".into(), shared("Unauthorized"));
            if access != Access::AnyKey {
                responses.insert("403".into(), shared("Forbidden"));
            }
        }
    }
}

/// The document as `openapi.json` holds it: pretty JSON and a final newline.
pub fn to_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Adds what the derive cannot: the bearer scheme of API keys and the `Retry-After` header.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        bearer.description = Some(
            "An API key, `tally_<id>_<secret>`, created with `tally keys create --name NAME --scope SCOPE`. Each operation lists the scope it needs: `transactions:write`, `ledger:read` or `admin` (`admin` grants every scope); an empty list means any valid key. No key, or a malformed, unknown or revoked one: 401 `unauthorized`. A valid key without the scope: 403 `forbidden`. Not asked for when the server runs with `auth.enabled = false`."
                .into(),
        );
        components.add_security_scheme(API_KEY, SecurityScheme::Http(bearer));
        components.headers.insert(
            "RetryAfter".into(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    ))
                    .description(Some(
                        "Seconds to wait before retrying (`api.retry_after_secs`, default 1).",
                    ))
                    .build(),
            ),
        );
    }
}

/// A string schema with these values only (`description` when the field has one).
pub fn strings(values: &[&str], description: Option<&str>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(description)
        .build()
}

/// A schema written out by hand: the primitives whose rules no Rust type carries.
macro_rules! primitive {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::from($schema))
            }
        }

        impl ToSchema for $name {}
    };
}

primitive!(
    /// Every identifier: ids, account ids, user ids, the `Idempotency-Key` header.
    Identifier => ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))
        .description(Some("1-128 characters of letters, digits and `.` `_` `:` `-`."))
        .examples([json!("acc-1")])
        .build()
);

primitive!(
    /// Money in a response (`tally_core::amount::money_json`).
    Money => ObjectBuilder::new()
        .schema_type(Type::Number)
        .description(Some("An exact decimal amount. The JSON number's text is the exact, shortest decimal value (`100.5`, `0.3`, `-30`; never `100.50` or `100.49999`): parse it as a decimal, not as a binary float."))
        .examples([json!(100.5)])
        .build()
);

primitive!(
    /// The amount of one transaction in a response.
    PositiveMoney => ObjectBuilder::new()
        .schema_type(Type::Number)
        .exclusive_minimum(Some(0))
        .maximum(Some(1_000_000_000_000_000_usize))
        .description(Some("An exact, positive decimal amount of one transaction. The JSON number's text is the exact, shortest decimal value (`100.5`, never `100.50` or `100.49999`): parse it as a decimal, not as a binary float."))
        .examples([json!(100.5)])
        .build()
);

primitive!(
    /// The amount of a request, as `tally_core::AmountRules` reads it.
    AmountInput => OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0))
                .maximum(Some(1_000_000_000_000_000_usize)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^\\+?[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?$")),
        )
        .description(Some("The amount: a JSON number or a JSON string holding a decimal number (plain `12.5` or exponent `1.25e1` notation). Parsed exactly, never through a binary float. Must be > 0, at most 10^15 (`ledger.max_amount`) and have at most 2 decimal places (`ledger.amount_scale`) once trailing zeros are dropped (`\"10.50\"` is fine, `0.001` is a 400 `invalid_amount`, never a rounding). Exponent notation is held to the same rule on its exact value: `10.00999999999999999999999999999999e0` is a 400, not 10.01."))
        .examples([json!("100.50")])
        .build()
);

/// An error answer of this description with `example` as its body.
fn error_response(description: &str, example: serde_json::Value) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .example(Some(example))
            .build(),
    )
}

/// A shared error response, referenced by the operations as `#/components/responses/<name>`.
macro_rules! shared_response {
    ($(#[$doc:meta])* $name:ident => $response:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), RefOr::T($response.build()))
            }
        }
    };
}

shared_response!(
    /// 503 `unavailable` of any route.
    Unavailable => error_response(
        "A dependency is unavailable (code `unavailable`): nothing was done. On reads: PostgreSQL is unreachable. Retry after `Retry-After` seconds.",
        json!({"error": {"code": "unavailable", "message": "the broker did not accept the transaction; nothing was accepted, retry with the same id"}}),
    )
    .header_ref("Retry-After", Ref::new("#/components/headers/RetryAfter"))
);

shared_response!(
    /// 500 of any route.
    Internal => error_response(
        "Unexpected failure (code `internal`). The cause is logged, never returned.",
        json!({"error": {"code": "internal", "message": "internal error"}}),
    )
);

shared_response!(
    /// 400 of a bad path identifier.
    BadPath => error_response(
        "The path parameter is not a valid identifier (code `invalid_id`, `field` names it).",
        json!({"error": {"code": "invalid_id", "message": "`accountId` may only contain letters, digits and . _ : -", "field": "accountId"}}),
    )
);

shared_response!(
    /// 400 of a bad period of the largest-expense routes ([`crate::routes::history::RangeQuery`]).
    BadPeriod => error_response(
        "Missing or invalid period: `missing_field` (`from` or `to` absent), `invalid_timestamp` (not RFC 3339), `invalid_range` (`from` after `to`, `field` = `from`), or `invalid_id` for the path parameter. `field` names the culprit.",
        json!({"error": {"code": "invalid_range", "message": "`from` must not be after `to`", "field": "from"}}),
    )
);

shared_response!(
    /// 400 of a job route whose `{id}` is not a job id.
    BadJobId => error_response(
        "Not a job id. Code `invalid_id`.",
        json!({"error": {"code": "invalid_id", "message": "`id` must be a job id (UUID)", "field": "id"}}),
    )
);

shared_response!(
    /// 404 of a job route.
    JobNotFound => error_response(
        "No such job. Code `job_not_found`.",
        json!({"error": {"code": "job_not_found", "message": "no job 5f0c7c1e-8a43-4a0e-9b7e-2d1f3c4b5a69"}}),
    )
);

shared_response!(
    /// 400 of a bad page of a debug dump.
    BadPage => error_response(
        "Invalid paging parameters: `invalid_limit` (limit outside 1..10000, `field` = `limit`), `invalid_id` (bad `after`, `field` = `after`) or `invalid_query` (unparsable query string).",
        json!({"error": {"code": "invalid_limit", "message": "`limit` must be between 1 and 10000", "field": "limit"}}),
    )
);

shared_response!(
    /// 403 of an operation whose scope the key does not grant.
    Forbidden => error_response(
        "The API key is valid but does not grant the scope this operation needs (code `forbidden`). Nothing was done.",
        json!({"error": {"code": "forbidden", "message": "this key does not grant the scope `admin`"}}),
    )
);

shared_response!(
    /// 401 of every operation that needs an API key.
    Unauthorized => error_response(
        "No `Authorization: Bearer <key>` header, or a key that is malformed, unknown or revoked (code `unauthorized`). Nothing was done.",
        json!({"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}),
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(Some(strings(&["Bearer"], None)))
            .description(Some("Always `Bearer`."))
            .build(),
    )
);
