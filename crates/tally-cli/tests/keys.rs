//! `tally keys` end to end: the real binary against a fresh database. A created key's text is
//! printed once (stdout, alone), never by `list`, and never stored; `revoke` revokes once.

#![allow(clippy::unwrap_used)] // a panic in a test is its failure message

use std::process::Output;
use tally_testkit::fresh_database;
use tokio::process::Command;

async fn tally(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("keys")
        .args(args)
        .env("TALLY_PROFILE", "local")
        .env("TALLY_DATABASE__URL", database_url)
        .env_remove("TALLY_CONFIG")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_key_is_shown_once_listed_without_its_text_and_revoked_once() {
    let db = fresh_database().await;
    let created = tally(
        &db.url,
        &[
            "create",
            "--name",
            "ci-bot",
            "--scope",
            "ledger:read",
            "--scope",
            "transactions:write",
        ],
    )
    .await;
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_string();
    assert!(token.starts_with("tally_"), "{token}");
    assert_eq!(
        text(&created.stdout).lines().count(),
        1,
        "stdout is the key alone"
    );
    let secret = token.rsplit('_').next().unwrap().to_string();
    assert!(!text(&created.stderr).contains(&secret));
    let id = token.split('_').nth(1).unwrap().to_string();

    let listed = tally(&db.url, &["list"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let list = text(&listed.stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the key is listed");
    assert!(
        line.contains("ci-bot") && line.contains("transactions:write,ledger:read"),
        "{line}"
    );
    assert!(line.trim_end().ends_with('-'), "not revoked yet: {line}");
    assert!(!list.contains(&secret), "list shows a key's text");
    let pool = db.pool(1);
    let stored: String = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT row_to_json(k)::text FROM api_keys k", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!stored.contains(&secret), "the key's text is stored");

    assert!(tally(&db.url, &["revoke", &id]).await.status.success());
    let list = text(&tally(&db.url, &["list"]).await.stdout);
    let line = list.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(!line.trim_end().ends_with('-'), "revoked: {line}");
    let again = tally(&db.url, &["revoke", &id]).await;
    assert!(!again.status.success(), "revoked twice");

    // A name the envelopes could not carry is refused; nothing is created.
    let bad = tally(
        &db.url,
        &["create", "--name", "has space", "--scope", "admin"],
    )
    .await;
    assert!(!bad.status.success());
    assert_eq!(
        text(&tally(&db.url, &["list"]).await.stdout)
            .lines()
            .count(),
        2
    );
}

#[tokio::test]
async fn init_writes_two_working_keys_once_and_replaces_them_when_revoked() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_database().await;
    let dir = std::env::temp_dir().join(format!("tally-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.env");
    let out = file.to_str().unwrap();
    let init = tally(&db.url, &["init", "--out", out, "--name-prefix", "t"]).await;
    assert!(init.status.success(), "{}", text(&init.stderr));
    assert!(init.stdout.is_empty(), "keys go to the file only");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&file).unwrap();
    let value = |text: &str, var: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap()
            .to_string()
    };
    let (admin, rw) = (
        value(&first, "TALLY_ADMIN_KEY"),
        value(&first, "TALLY_API_KEY"),
    );
    assert!(!text(&init.stderr).contains(&admin[40..]));
    let listed = text(&tally(&db.url, &["list"]).await.stdout);
    assert!(
        listed.contains("t-admin") && listed.contains("t-rw"),
        "{listed}"
    );

    // Valid: kept as they are.
    assert!(tally(&db.url, &["init", "--out", out])
        .await
        .status
        .success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // One revoked: both replaced.
    let id = rw.split('_').nth(1).unwrap();
    assert!(tally(&db.url, &["revoke", id]).await.status.success());
    assert!(tally(&db.url, &["init", "--out", out])
        .await
        .status
        .success());
    let second = std::fs::read_to_string(&file).unwrap();
    assert_ne!(value(&second, "TALLY_API_KEY"), rw);
    assert_ne!(value(&second, "TALLY_ADMIN_KEY"), admin);
    std::fs::remove_dir_all(&dir).unwrap();
}
