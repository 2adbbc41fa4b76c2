//! `connect_with_heartbeat` negotiates the short AMQP heartbeat a worker needs so that
//! RabbitMQ drops its consumers soon after it stalls (the broker's default is 60 s).

use std::time::Duration;

fn amqp_url() -> String {
    std::env::var("TALLY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn negotiated(url: &str, heartbeat: Option<Duration>) -> u16 {
    let timeout = Duration::from_secs(5);
    let connection = match heartbeat {
        Some(h) => tally_bus::connect_with_heartbeat(url, "heartbeat-test", timeout, h).await,
        None => tally_bus::connect(url, "heartbeat-test", timeout).await,
    }
    .expect("broker");
    let heartbeat = connection.configuration().heartbeat();
    let _ = connection.close(200, "done".into()).await;
    heartbeat
}

#[tokio::test]
async fn the_worker_heartbeat_is_negotiated_and_a_lower_one_in_the_url_wins() {
    let url = amqp_url();
    assert_eq!(negotiated(&url, Some(Duration::from_secs(2))).await, 2);
    // Whole seconds, at least one.
    assert_eq!(negotiated(&url, Some(Duration::from_millis(300))).await, 1);
    let separator = if url.contains('?') { '&' } else { '?' };
    let with_one = format!("{url}{separator}heartbeat=1");
    assert_eq!(negotiated(&with_one, Some(Duration::from_secs(2))).await, 1);
    // Without it, the broker's default applies: far longer than a lease.
    assert!(negotiated(&url, None).await > 2);
}
