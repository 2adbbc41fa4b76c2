//! `nginx/local.conf.template` rendered as `deploy/local/stack.sh` renders it, for the
//! programs that run nginx in front of API replicas of their own (tests, the fault suite).

/// The template, compiled in: whoever renders it runs the same config as `make up`.
pub const TEMPLATE: &str = include_str!("../../../nginx/local.conf.template");

/// stack.sh's default per-client rate limit (`RATE_LIMIT`, `RATE_BURST`): high, since every
/// local client is 127.0.0.1.
pub const DEFAULT_RATE: &str = "5000r/s";
pub const DEFAULT_BURST: u32 = 10_000;

/// The config for nginx on 127.0.0.1:`port` in front of `api_ports`, in the foreground
/// (`daemon off`: the caller owns the master process), with the given rate limit.
pub fn local_config(port: u16, api_ports: &[u16], rate: &str, burst: u32) -> String {
    let servers: String = api_ports
        .iter()
        // max_fails=0: see the comment in the template's upstream block.
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    TEMPLATE
        .replace("@PORT@", &port.to_string())
        .replace("@UPSTREAM_SERVERS@", &servers)
        .replace("@RATE_LIMIT@", rate)
        .replace("@RATE_BURST@", &burst.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_rendered() {
        let config = local_config(8080, &[8001, 8002], DEFAULT_RATE, DEFAULT_BURST);
        assert_eq!(leftover_placeholder(&config), None);
        assert!(config.contains("server 127.0.0.1:8002 max_fails=0;"));
        assert!(config.contains("daemon off;"));
        assert_eq!(leftover_placeholder("x @NEW_ONE@ y"), Some("NEW_ONE"));
    }
}
