//! `openapi.json` at the repository root is the document the code generates
//! (`tally_api::openapi`, from the routes as they are registered and the model types): the
//! committed file is checked against it and is a consistent OpenAPI 3 document. That the
//! running server serves each documented path is an end-to-end test (`tally-e2e`).

use serde_json::Value;
use std::collections::BTreeSet;

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
/// HTTP methods an OpenAPI path item may hold.
const SPEC_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Value {
    let text = std::fs::read_to_string(SPEC_PATH).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is valid JSON")
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
