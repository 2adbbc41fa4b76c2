//! A broker of several nodes (`broker.urls`): the API's publisher and the worker connect to a
//! live node and move to another when theirs dies, without a restart, and nothing answered
//! 200 is lost. The nodes here are proxies to the tests' one broker, cut one at a time; the
//! loss of a real cluster node (`kill -9` under load) is `make test-ha`.

use serde_json::json;
use std::time::Duration;

use crate::helpers::{broker_address, eventually, Options, TcpProxy, TestApp};

/// Posts a deposit of 1 until it is answered 200, retrying with the same id after a 503 (as
/// a client does: `unavailable` and `outcome_unknown` both say "ask again with this id").
async fn deposit_until_accepted(app: &TestApp, id: &str, account: &str) {
    let body = json!({"id": id, "type": "deposit", "amount": 1, "accountId": account});
    eventually(Duration::from_secs(30), || async {
        let (status, answer) = app.post_json(&body).await;
        assert!(
            status == 200 || status == 503,
            "{id}: unexpected {status} {answer}"
        );
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_api_and_the_worker_move_to_a_live_node_when_theirs_dies_and_no_200_is_lost() {
    let nodes = [
        TcpProxy::start(broker_address()).await,
        TcpProxy::start(broker_address()).await,
    ];
    let app = TestApp::spawn_with(Options {
        broker_urls: nodes
            .iter()
            .map(|node| format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port))
            .collect(),
        ..Options::default()
    })
    .await;
    let account = "on-two-nodes";
    // Node 0 down, then node 1 (so whichever node a process began on, it had to move at
    // least once), then node 0 again; deposits are accepted in every phase.
    let mut accepted = 0;
    for (phase, down) in [0, 1, 0].into_iter().enumerate() {
        nodes[down].cut();
        for i in 0..10 {
            deposit_until_accepted(&app, &format!("dep-{phase}-{i}"), account).await;
            accepted += 1;
        }
        nodes[down].restore();
    }
    // The worker moved too: everything accepted is applied, exactly once.
    app.wait_balance(account, &accepted.to_string()).await;
    assert_eq!(
        app.count("SELECT count(*) FROM transactions").await,
        accepted
    );
}
