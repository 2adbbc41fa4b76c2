//! `openapi.json` at the repository root is the document the code generates
//! (`tally_api::openapi`, from the routes as they are registered and the model types): the
//! committed file is checked against it, is a consistent OpenAPI 3 document, and the running
//! server serves each documented path.

use serde_json::{json, Value};
use std::collections::BTreeSet;

use crate::helpers::TestApp;

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
/// HTTP methods an OpenAPI path item may hold.
const SPEC_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Value {
    let text = std::fs::read_to_string(SPEC_PATH).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is valid JSON")
}

/// `/account/{account_id}` and `/account/{accountId}` both become `/account/{}`.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0usize;
    for c in path.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("{}");
                }
                depth += 1;
            }
            '}' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

/// Replaces every path parameter with `value`.
fn substitute(path: &str, value: &str) -> String {
    normalize(path).replace("{}", value)
}

/// Every `$ref` string in the document, with its JSON location.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    if let Value::String(target) = v {
                        out.push((at.to_string(), target.clone()));
                    }
                } else {
                    refs(v, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn normalize_erases_parameter_names() {
    assert_eq!(normalize("/account/{account_id}"), "/account/{}");
    assert_eq!(normalize("/account/{accountId}"), "/account/{}");
    assert_eq!(normalize("/a/{id:\\d{2}}/b/{x}"), "/a/{}/b/{}");
    assert_eq!(substitute("/transactions/{id}", "x1"), "/transactions/x1");
}

#[test]
fn openapi_is_a_3x_document_with_paths_and_consistent_references() {
    let spec = spec();
    let version = spec["openapi"].as_str().expect("`openapi` version string");
    assert!(version.starts_with("3."), "not OpenAPI 3.x: {version}");
    assert!(spec["info"]["title"].is_string() && spec["info"]["version"].is_string());
    let paths = spec["paths"].as_object().expect("`paths` is an object");
    assert!(!paths.is_empty(), "no paths documented");

    // Every operation has a unique operationId and at least one response.
    let mut ids = BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "path must start with /: {path}");
        for method in SPEC_METHODS {
            let Some(op) = item.get(method) else { continue };
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
            let responses = op["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
        }
    }

    // Every local $ref points at something that exists.
    let mut found = Vec::new();
    refs(&spec, "#", &mut found);
    assert!(!found.is_empty());
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: only local refs expected, got {target}"));
        assert!(
            spec.pointer(pointer).is_some(),
            "{at}: dangling $ref {target}"
        );
    }
}

/// The committed document is the generated one: a route, a parameter or a type changed in the
/// code without `make openapi` fails here (CI runs it).
#[test]
fn openapi_json_is_the_document_the_code_generates() {
    let committed = std::fs::read_to_string(SPEC_PATH).expect("read openapi.json");
    let generated = tally_api::openapi::to_json();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "openapi.json differs from the document the code generates (first at line {}): \
             run `make openapi` and commit the result",
            line + 1
        );
    }
}

#[tokio::test]
async fn every_documented_path_is_served_by_the_running_api() {
    let app = TestApp::spawn().await;
    let is_default_404 =
        |status: u16, body: &Value| status == 404 && body["error"]["code"] == "not_found";

    // The check means something: an unknown path does get the default 404.
    let (status, body) = app.get("/no/such/route").await;
    assert!(is_default_404(status, &body), "{status} {body}");

    let spec = spec();
    let paths = spec["paths"].as_object().expect("`paths` is an object");
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = substitute(path, "x1");
        if item.get("get").is_some() {
            let (status, body) = app.get(&concrete).await;
            assert!(
                !is_default_404(status, &body),
                "GET {concrete} (documented as {path}) is not served: {status} {body}"
            );
            checked += 1;
        }
        if item.get("post").is_some() {
            // An empty object: a served route refuses it with its own 400, not the default 404.
            let response = app
                .client
                .post(format!("{}{concrete}", app.address))
                .json(&json!({}))
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                !is_default_404(status, &body),
                "POST {concrete} (documented as {path}) is not served: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no GET or POST operation in openapi.json");
}
