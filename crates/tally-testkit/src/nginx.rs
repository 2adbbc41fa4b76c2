//! `nginx/local.conf.template` rendered as `deploy/local/stack.sh` renders it, for the
//! programs that run nginx in front of API replicas of their own (tests, the fault suite),
//! and [`Nginx`]: nginx run from it in the foreground, stopped with its value (tests).

use std::time::Duration;
use tokio::net::TcpStream;

use crate::services::eventually;

/// The template, compiled in: whoever renders it runs the same config as `make up`.
pub const TEMPLATE: &str = include_str!("../../../nginx/local.conf.template");

/// stack.sh's default per-client rate limit (`RATE_LIMIT`, `RATE_BURST`): high, since every
/// local client is 127.0.0.1.
pub const DEFAULT_RATE: &str = "5000r/s";
pub const DEFAULT_BURST: u32 = 10_000;

/// nginx's rate limits: per client address and per API key (`RATE_LIMIT`, `RATE_BURST`,
/// `KEY_RATE_LIMIT`, `KEY_RATE_BURST` of stack.sh).
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub rate: &'a str,
    pub burst: u32,
    pub key_rate: &'a str,
    pub key_burst: u32,
}

/// stack.sh's defaults.
pub const DEFAULT_LIMITS: Limits<'static> = Limits {
    rate: DEFAULT_RATE,
    burst: DEFAULT_BURST,
    key_rate: "2000r/s",
    key_burst: 4000,
};

/// A certificate and its key for nginx to terminate TLS with (`TLS_CERT`, `TLS_KEY` of
/// stack.sh), absolute paths.
#[derive(Debug, Clone, Copy)]
pub struct Tls<'a> {
    pub certificate: &'a std::path::Path,
    pub key: &'a std::path::Path,
}

/// The config for nginx on 127.0.0.1:`port` in front of `api_ports`, in the foreground
/// (`daemon off`: the caller owns the master process), with the given rate limits, in plain
/// HTTP.
pub fn local_config(port: u16, api_ports: &[u16], limits: Limits<'_>) -> String {
    local_config_tls(port, api_ports, limits, None)
}

/// [`local_config`], terminating TLS with `tls` when given (as stack.sh renders it).
pub fn local_config_tls(
    port: u16,
    api_ports: &[u16],
    limits: Limits<'_>,
    tls: Option<Tls<'_>>,
) -> String {
    let (listen, certificate) = match tls {
        Some(tls) => (
            " ssl".to_string(),
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        \
                 ssl_protocols TLSv1.2 TLSv1.3;",
                tls.certificate.display(),
                tls.key.display()
            ),
        ),
        None => (String::new(), String::new()),
    };
    let servers: String = api_ports
        .iter()
        // max_fails=0: see the comment in the template's upstream block.
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    TEMPLATE
        .replace("@PORT@", &port.to_string())
        .replace("@UPSTREAM_SERVERS@", &servers)
        .replace("@TLS_LISTEN@", &listen)
        .replace("@TLS_CERTIFICATE@", &certificate)
        .replace("@KEY_RATE_LIMIT@", limits.key_rate)
        .replace("@KEY_RATE_BURST@", &limits.key_burst.to_string())
        .replace("@RATE_LIMIT@", limits.rate)
        .replace("@RATE_BURST@", &limits.burst.to_string())
        .replace("daemon on;", "daemon off;")
}

/// The first `@NAME@` placeholder left in `config`, if any (stack.sh refuses those too).
pub fn leftover_placeholder(config: &str) -> Option<&str> {
    config
        .split('@')
        .skip(1)
        .step_by(2)
        .find(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
}

/// nginx in front of a test's API replicas, with the project's own config template
/// (`nginx/local.conf.template`), in the foreground; killed with this value.
pub struct Nginx {
    pub address: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// With stack.sh's default rate limit (high: every test client is 127.0.0.1).
    pub async fn start(api_ports: &[u16]) -> Self {
        Self::start_with(api_ports, DEFAULT_LIMITS).await
    }

    /// With the given per-client rate limit (`RATE_LIMIT`/`RATE_BURST` of stack.sh).
    pub async fn start_limited(api_ports: &[u16], rate: &str, burst: u32) -> Self {
        Self::start_with(
            api_ports,
            Limits {
                rate,
                burst,
                ..DEFAULT_LIMITS
            },
        )
        .await
    }

    /// Terminating TLS with `tls` (the address is `https://127.0.0.1:<port>`); waits until
    /// it accepts connections.
    pub async fn start_tls(api_ports: &[u16], tls: Tls<'_>) -> Self {
        let nginx = Self::spawn_with(api_ports, DEFAULT_LIMITS, Some(tls));
        let address = nginx.address.trim_start_matches("https://").to_string();
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(&address).await.ok()
        })
        .await;
        nginx
    }

    /// With the given rate limits, per client address and per API key.
    pub async fn start_with(api_ports: &[u16], limits: Limits<'_>) -> Self {
        let nginx = Self::spawn(api_ports, limits);
        let client = reqwest::Client::new();
        let url = format!("{}/health/live", nginx.address);
        eventually(Duration::from_secs(10), || async {
            client
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        nginx
    }

    /// In front of upstreams that do not serve `/health/live` (stand-ins a test scripts):
    /// waits only until nginx accepts connections.
    pub async fn start_unchecked(api_ports: &[u16]) -> Self {
        let nginx = Self::spawn(api_ports, DEFAULT_LIMITS);
        let address = nginx.address.trim_start_matches("http://").to_string();
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(&address).await.ok()
        })
        .await;
        nginx
    }

    fn spawn(api_ports: &[u16], limits: Limits<'_>) -> Self {
        Self::spawn_with(api_ports, limits, None)
    }

    fn spawn_with(api_ports: &[u16], limits: Limits<'_>, tls: Option<Tls<'_>>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = local_config_tls(port, api_ports, limits, tls);
        let dir =
            std::env::temp_dir().join(format!("tally-nginx-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        std::fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log"])
            // Its workers must not hold the test runner's output pipes open.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx (installed by deploy/local/services.sh)");
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            address: format!("{scheme}://127.0.0.1:{port}"),
            child,
            dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
        let stopped = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .args(["-c", "nginx.conf", "-e", "logs/error.log", "-s", "stop"])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_rendered() {
        let config = local_config(8080, &[8001, 8002], DEFAULT_LIMITS);
        assert_eq!(leftover_placeholder(&config), None);
        assert!(config.contains("server 127.0.0.1:8002 max_fails=0;"));
        assert!(config.contains("daemon off;"));
        assert!(
            !config
                .lines()
                .any(|l| l.trim_start().starts_with("ssl_certificate"))
                && config.contains("listen 127.0.0.1:8080;"),
            "plain HTTP by default"
        );
        let tls = local_config_tls(
            8443,
            &[8001],
            DEFAULT_LIMITS,
            Some(Tls {
                certificate: std::path::Path::new("/etc/tally/cert.pem"),
                key: std::path::Path::new("/etc/tally/key.pem"),
            }),
        );
        assert_eq!(leftover_placeholder(&tls), None);
        assert!(tls.contains("listen 127.0.0.1:8443 ssl;"), "{tls}");
        assert!(tls.contains("ssl_certificate /etc/tally/cert.pem;"));
        assert_eq!(leftover_placeholder("x @NEW_ONE@ y"), Some("NEW_ONE"));
    }
}
