//! TLS on every hop to the backing services (nginx's TLS termination: `security.rs`): the API and a worker run against a PostgreSQL and
//! a RabbitMQ of this test's own that accept TLS only, with certificates from a CA the test
//! makes (Debian's `openssl`); the connections are encrypted (`pg_stat_ssl`, `rabbitmqctl
//! list_connections ssl`), and a plaintext connection is refused at start with the server's
//! reason. Everything the test starts is stopped when it ends, even after a failed assertion.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tally_api::Application;
use tally_settings::Secret;
use tokio_util::sync::CancellationToken;

use crate::helpers::{client_with_key, eventually, test_keys, test_settings};

fn run(what: &str, command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An error and its causes, as `anyhow` prints them at a binary's start.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A CA (`ca.pem`), and a certificate it signed for 127.0.0.1 and localhost (`server.pem`,
/// `server.key`) in `dir`.
pub(crate) fn make_certificates(dir: &Path) {
    let ssl = |args: &[&str]| {
        run(
            "openssl",
            Command::new("openssl").args(args).current_dir(dir),
        )
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=tally test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

/// A PostgreSQL cluster (initdb) and a RabbitMQ node of this test's own, TLS only.
struct TlsServices {
    dir: PathBuf,
    pg_port: u16,
    amqps_port: u16,
    node: String,
}

impl TlsServices {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("tally-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut services = Self {
            pg_port: free_port(),
            amqps_port: free_port(),
            node: format!(
                "tallytls{}@localhost",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            dir,
        };
        run("chmod", Command::new("chmod").arg("755").arg(&services.dir));
        make_certificates(&services.dir);
        services.start_postgres();
        services.start_rabbitmq();
        services
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn start_postgres(&mut self) {
        let pg = self.path("pg");
        std::fs::create_dir_all(&pg).unwrap();
        std::fs::write(self.dir.join("pwfile"), "tally\n").unwrap();
        for file in ["server.pem", "server.key"] {
            std::fs::copy(self.dir.join(file), Path::new(&pg).join(file)).unwrap();
        }
        let bin = "/usr/lib/postgresql/15/bin";
        run(
            "chown",
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir),
        );
        let data = format!("{pg}/data");
        run(
            "initdb",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{bin}/initdb"))
                .args([
                    "-D",
                    &data,
                    "-U",
                    "tally",
                    "--pwfile",
                    &self.path("pwfile"),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]),
        );
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{pg}'\n\
             ssl = on\nssl_cert_file = '{pg}/server.pem'\nssl_key_file = '{pg}/server.key'\n\
             fsync = off\n",
            self.pg_port
        );
        let mut postgresql_conf =
            std::fs::read_to_string(format!("{data}/postgresql.conf")).unwrap();
        postgresql_conf.push_str(&conf);
        std::fs::write(format!("{data}/postgresql.conf"), postgresql_conf).unwrap();
        // TLS or nothing over TCP.
        std::fs::write(
            format!("{data}/pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        run(
            "chmod",
            Command::new("chmod").args(["600", &format!("{pg}/server.key")]),
        );
        run(
            "chown",
            Command::new("chown").args(["-R", "postgres:postgres", &pg]),
        );
        run(
            "pg_ctl start",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{bin}/pg_ctl"))
                .args(["-D", &data, "-l", &format!("{pg}/log"), "-w", "start"]),
        );
    }

    fn start_rabbitmq(&mut self) {
        let r = self.path("rabbit");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(
            format!("{r}/rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 distribution.listener.interface = 127.0.0.1\n",
                self.amqps_port,
                ca = self.path("ca.pem"),
                cert = self.path("server.pem"),
                key = self.path("server.key"),
            ),
        )
        .unwrap();
        std::fs::write(format!("{r}/enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            format!("{r}/env.conf"),
            format!(
                "NODENAME={}\nNODE_IP_ADDRESS=127.0.0.1\nNODE_PORT={}\nDIST_PORT={}\n\
                 MNESIA_BASE={r}/mnesia\nLOG_BASE={r}/log\nCONFIG_FILE={r}/rabbitmq.conf\n\
                 ENABLED_PLUGINS_FILE={r}/enabled_plugins\n",
                self.node,
                free_port(),
                free_port(),
            ),
        )
        .unwrap();
        // The broker reads the key as its own user.
        run(
            "chmod",
            Command::new("chmod").args(["644", &self.path("server.key")]),
        );
        run(
            "chown",
            Command::new("chown").args(["-R", "rabbitmq:rabbitmq", &r]),
        );
        run(
            "rabbitmq-server",
            Command::new("runuser")
                .args(["-u", "rabbitmq", "--", "env"])
                .arg(format!("RABBITMQ_CONF_ENV_FILE={r}/env.conf"))
                .args(["HOME=/var/lib/rabbitmq", "rabbitmq-server", "-detached"]),
        );
    }

    fn database_url(&self, database: &str, tls: bool) -> String {
        let base = format!(
            "postgres://tally:tally@127.0.0.1:{}/{database}",
            self.pg_port
        );
        if tls {
            format!(
                "{base}?sslmode=verify-full&sslrootcert={}",
                self.path("ca.pem")
            )
        } else {
            base
        }
    }

    fn amqp_url(&self, tls: bool) -> String {
        if tls {
            format!(
                "amqps://guest:guest@127.0.0.1:{}/%2f?cacertfile={}",
                self.amqps_port,
                self.path("ca.pem")
            )
        } else {
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqps_port)
        }
    }

    /// `rabbitmqctl list_connections ssl` of this node: one bool per connection.
    fn broker_connections_ssl(&self) -> Vec<bool> {
        run(
            "rabbitmqctl list_connections",
            Command::new("rabbitmqctl").args(["-q", "-n", &self.node, "list_connections", "ssl"]),
        )
        .lines()
        .filter_map(|l| match l.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
        .collect()
    }
}

impl Drop for TlsServices {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-D",
            ])
            .arg(self.dir.join("pg/data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_worker_talk_to_postgresql_and_rabbitmq_over_tls_only() {
    let services = TlsServices::start();
    // The broker boots in 10-25 s on 2 cores; wait for an AMQPS session.
    let amqps = services.amqp_url(true);
    eventually(Duration::from_secs(90), || async {
        tally_bus::connect(&amqps, "probe", Duration::from_secs(2))
            .await
            .ok()
    })
    .await;

    // A database of the ledger, made and migrated over TLS.
    let admin = services.database_url("postgres", true);
    let (config, tls) = tally_store::tls::parse(&admin).unwrap();
    let tally_store::tls::Tls::VerifyFull(connector) = tls else {
        panic!("not TLS: {admin}");
    };
    let (client, connection) = config.connect(connector).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE DATABASE ledger")
        .await
        .unwrap();
    let url = services.database_url("ledger", true);
    tally_store::migrate::run(&url).await.unwrap();

    let mut settings = test_settings(
        &url,
        &format!("tls-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    settings.broker.url = Secret::new(amqps.clone());
    let keys = test_keys(&url).await;
    let stop = CancellationToken::new();
    let app = Application::build(settings.clone(), stop.clone())
        .await
        .unwrap();
    assert!(
        app.publisher()
            .wait_connected(Duration::from_secs(20))
            .await
    );
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(stop.clone()));
    let worker = tally_worker::Worker::build(settings.clone()).await.unwrap();
    tokio::spawn(worker.run(stop.clone()));

    let client_http = client_with_key(&keys.read_write);
    let answer = client_http
        .post(format!("{address}/transaction"))
        .json(&json!({"id": "tls-1", "type": "deposit", "amount": 7, "accountId": "acc-tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    eventually(Duration::from_secs(15), || async {
        let r = client_http
            .get(format!("{address}/transactions/tls-1"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Every session of the ledger's database is encrypted...
    let (sessions, all_ssl): (i64, bool) = {
        let row = client
            .query_one(
                "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'ledger'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        sessions >= 2 && all_ssl,
        "{sessions} sessions, all TLS: {all_ssl}"
    );
    // ... and so is every broker connection (the API's publisher, the worker's).
    let connections = services.broker_connections_ssl();
    assert!(
        connections.len() >= 2 && connections.iter().all(|ssl| *ssl),
        "{connections:?}"
    );

    // Plaintext is refused at start, with the server's reason (in the error's causes, which
    // the binaries print).
    let mut plain = settings.clone();
    plain.database.url = Secret::new(services.database_url("ledger", false));
    let Err(refused) = tally_store::connect_service(&plain).await else {
        panic!("a plaintext connection was accepted");
    };
    let text = chain(&refused);
    assert!(text.contains("no encryption"), "{text}");
    let plain_amqp = services.amqp_url(false);
    let Err(refused) = tally_bus::connect(&plain_amqp, "plain", Duration::from_secs(5)).await
    else {
        panic!("a plaintext AMQP connection was accepted");
    };
    assert!(
        refused.to_string().contains("use amqps://"),
        "{}",
        chain(&refused)
    );
    stop.cancel();
}
