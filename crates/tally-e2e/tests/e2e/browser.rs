//! The operator console in headless Chromium: the page loads with an admin key, its shard
//! table matches `/debug/shards`, a dead letter is re-published by its button (and then
//! applied), and an account is looked up.
//!
//! Driven through chromedriver with the W3C WebDriver protocol spoken directly over `reqwest`
//! (already a dependency here): the handful of commands used — session, navigate, find,
//! type, click, run a script, screenshot — do not justify a WebDriver crate (fantoccini would
//! add about 25 crates, ICU segmentation data among them) nor a Python venv.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`WITH_TEST_TOOLS=1
//! deploy/local/services.sh` installs them; override the paths with `TALLY_CHROMIUM` and
//! `TALLY_CHROMEDRIVER`). Without them the test says so and passes — except under CI
//! (`CI` set), where it fails. `TALLY_CONSOLE_SCREENSHOT=path.png` saves a screenshot of the
//! page at the end (how docs/console.png was made).

use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{eventually, TestApp};

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process (in a process group of its own, with the Chromium it starts) and
/// one browser session.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started. Only our own child's id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// `path` when it names an executable file, else the first `name` on `PATH`.
fn executable(env: &str, name: &str) -> Option<String> {
    if let Ok(path) = std::env::var(env) {
        return Path::new(&path).is_file().then_some(path);
    }
    std::env::var("PATH").ok()?.split(':').find_map(|dir| {
        let candidate = Path::new(dir).join(name);
        candidate
            .is_file()
            .then(|| candidate.to_string_lossy().into_owned())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (after saying why) when
    /// they are not installed outside CI.
    async fn start() -> Option<Self> {
        let found = (
            executable("TALLY_CHROMIUM", "chromium"),
            executable("TALLY_CHROMEDRIVER", "chromedriver"),
        );
        let (Some(chromium), Some(chromedriver)) = found else {
            let why = "chromium and chromedriver are needed (apt-get install chromium \
                       chromium-driver, or WITH_TEST_TOOLS=1 deploy/local/services.sh)";
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED the console's browser test: {why}");
            return None;
        };
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), || async {
            let status = http.get(format!("{base}/status")).send().await.ok()?;
            let body: Value = status.json().await.ok()?;
            (body["value"]["ready"] == json!(true)).then_some(())
        })
        .await;
        let mut browser = Self {
            http,
            session: base.clone(),
            driver,
        };
        let created = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,1000"],
                    },
                }}}),
            )
            .await
            .expect("new WebDriver session");
        let id = created["sessionId"].as_str().expect("session id");
        browser.session = format!("{base}/session/{id}");
        Some(browser)
    }

    /// One WebDriver command relative to the session (or the driver before there is one);
    /// its `value`, or the driver's error text.
    async fn call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let request = self.http.request(method.parse().unwrap(), url);
        let request = if method == "GET" || method == "DELETE" {
            request
        } else {
            request.json(&body)
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(answer["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                answer["value"]["error"], answer["value"]["message"]
            ))
        }
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }))
            .await
            .unwrap();
    }

    async fn find(&self, css: &str) -> Result<String, String> {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element in {found}"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await.unwrap();
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .unwrap();
    }

    async fn click(&self, css: &str) -> Result<(), String> {
        let element = self.find(css).await?;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await
            .map(|_| ())
    }

    /// Runs `script` (a function body) in the page; what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
        .unwrap()
    }

    async fn screenshot(&self, path: &str) {
        let png = self.call("GET", "/screenshot", Value::Null).await.unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// The shard table as the page shows it: shard, owner, epoch, lease.
const SHARD_TABLE: &str = "return [...document.querySelectorAll('#shards tbody tr')]\
     .map(tr => [...tr.cells].slice(0, 4).map(td => td.textContent));";

#[tokio::test]
async fn the_console_shows_the_shards_and_republishes_a_dead_letter_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    for (n, account) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let amount = 100 + 25 * n;
        app.post_accepted(&json!({"id": format!("d-{account}"), "type": "deposit", "amount": amount, "accountId": account}))
            .await;
    }
    app.post_accepted(
        &json!({"id": "r-alice", "type": "withdraw_request", "amount": 30, "accountId": "alice"}),
    )
    .await;
    let id = app.dead_deposit("revived", "phoenix", "12.5").await;
    assert_eq!(app.balance("phoenix").await, "0");

    browser.goto(&format!("{}/console", app.address)).await;
    browser.type_into("#key", &app.keys.admin).await;
    browser
        .click("#key-form button[type=submit]")
        .await
        .unwrap();

    // The shard table matches /debug/shards (once every shard has its lease).
    eventually(Duration::from_secs(30), || async {
        let shown = browser.eval(SHARD_TABLE).await;
        let report = app.get_ok("/debug/shards").await;
        let expected: Vec<Value> = report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let lease = if s["live"] == json!(true) {
                    "live"
                } else {
                    "free"
                };
                json!([
                    s["shard"].to_string(),
                    s["owner"].as_str().unwrap_or(""),
                    s["epoch"].to_string(),
                    lease
                ])
            })
            .collect();
        let all_live = expected.iter().all(|row| row[3] == "live");
        (all_live && shown == json!(expected)).then_some(())
    })
    .await;

    // The dead letter is listed with a button; its click re-publishes it, and it is applied.
    let button = format!("button[data-republish=\"{id}\"]");
    eventually(Duration::from_secs(20), || async {
        // The table is redrawn every few seconds: a click may meet a replaced button.
        browser.click(&button).await.ok()
    })
    .await;
    app.wait_balance("phoenix", "12.5").await;
    let letters = app.get_ok("/debug/dead-letters").await;
    assert!(letters[0]["republishedAt"].is_string(), "{letters}");
    let done_cell = format!(
        "const row = document.querySelector('#dead-letters tr[data-id=\"{id}\"]'); \
         return row && !row.querySelector('button') ? row.cells[row.cells.length - 1].textContent : null;"
    );
    eventually(Duration::from_secs(20), || async {
        let shown = browser.eval(&done_cell).await;
        shown.as_str().filter(|t| !t.is_empty()).map(str::to_string)
    })
    .await;

    // An account lookup: balance, holds, history.
    browser.type_into("#account-id", "alice").await;
    browser.click("#account-form button").await.unwrap();
    eventually(Duration::from_secs(20), || async {
        let shown = browser
            .eval(
                "const b = document.getElementById('account-balance'); \
                 return [b && b.textContent, document.querySelectorAll('#holds tbody tr').length, \
                         document.querySelectorAll('#history tbody tr').length];",
            )
            .await;
        (shown == json!(["100", 1, 2])).then_some(())
    })
    .await;
    let verdict = browser
        .eval("return document.getElementById('conservation-verdict').textContent;")
        .await;
    assert_eq!(verdict, "pass");

    if let Ok(path) = std::env::var("TALLY_CONSOLE_SCREENSHOT") {
        // Let the throughput chart show the decisions of the last completed bucket.
        browser.click("#refresh").await.unwrap();
        browser.screenshot(&path).await;
    }
    let _ = browser.call("DELETE", "", Value::Null).await;
}
