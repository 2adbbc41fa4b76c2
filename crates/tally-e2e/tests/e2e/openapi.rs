//! The running server serves each path of its OpenAPI document (the document itself is checked
//! against the code in `tally-api`'s tests).

use serde_json::{json, Value};

use crate::helpers::TestApp;

/// `path` with every `{parameter}` segment replaced by `value`.
fn substitute(path: &str, value: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                value
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn substitute_replaces_every_parameter_segment() {
    assert_eq!(substitute("/transactions/{id}", "x1"), "/transactions/x1");
    assert_eq!(substitute("/a/{x}/b/{y}", "v"), "/a/v/b/v");
}

#[tokio::test]
async fn every_documented_path_is_served_by_the_running_api() {
    let app = TestApp::spawn().await;
    let is_default_404 =
        |status: u16, body: &Value| status == 404 && body["error"]["code"] == "not_found";

    // The check means something: an unknown path does get the default 404.
    let (status, body) = app.get("/no/such/route").await;
    assert!(is_default_404(status, &body), "{status} {body}");

    let spec: Value =
        serde_json::from_str(&tally_api::openapi::to_json()).expect("generated document");
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
