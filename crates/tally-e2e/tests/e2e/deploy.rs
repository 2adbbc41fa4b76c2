//! The deploy files that cannot run here (no Docker engine): `docker-compose.yml` is checked
//! for its structure (services, replicas, start order, commands that exist, settings the
//! binaries accept) and the nginx configs for `nginx -t` with this machine's nginx.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use tally_settings::Settings;
use tally_testkit::nginx;
use tally_worker::cli::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Resolves YAML merge keys (`<<: *anchor`) the way Docker Compose does: the mapping's own
/// keys win over merged ones. The loader already replaced aliases by their anchors' values.
fn merged(node: &Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(base) = hash.get(&Yaml::String("<<".into())) {
                let bases = match base {
                    Yaml::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for base in bases {
                    if let Yaml::Hash(b) = merged(&base) {
                        out.extend(b);
                    }
                }
            }
            for (k, v) in hash {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(list) => Yaml::Array(list.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).expect("valid YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    merged(&docs[0])
}

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .unwrap_or_else(|| panic!("expected a list, got {node:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// `environment:` as a map (compose allows a mapping; this file uses mappings).
fn environment(service: &Yaml) -> HashMap<String, String> {
    let Some(env) = service["environment"].as_hash() else {
        return HashMap::new();
    };
    env.iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => panic!("environment value {other:?}"),
            };
            (k.as_str().expect("key").to_string(), value)
        })
        .collect()
}

/// Binaries the Dockerfile builds and copies into the image.
fn image_binaries() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build --release"))
        .expect("Dockerfile builds with cargo build --release");
    let bins: Vec<String> = build
        .split("--bin ")
        .skip(1)
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .expect("bin name")
                .to_string()
        })
        .collect();
    for bin in &bins {
        assert!(
            dockerfile.contains(&format!("/out/{bin}")),
            "Dockerfile builds {bin} but does not copy it into the runtime image"
        );
        // The operator's `tally` is crate tally-cli's binary; the others are named after
        // their crate.
        let krate = if bin == "tally" {
            "tally-cli"
        } else {
            bin.as_str()
        };
        assert!(
            root().join(format!("crates/{krate}/src/main.rs")).exists(),
            "Dockerfile builds {bin}, which is not a workspace binary"
        );
    }
    bins
}

#[test]
fn compose_file_has_the_services_the_order_and_commands_that_exist() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for expected in [
        "postgres", "rabbitmq", "migrate", "keys", "api", "worker", "nginx",
    ] {
        assert!(
            names.contains(&expected),
            "service {expected} missing: {names:?}"
        );
    }
    let service = |name: &str| &doc["services"][name];

    // Every depends_on names a service, with a condition that service can meet.
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        let Some(deps) = svc["depends_on"].as_hash() else {
            continue;
        };
        for (dep, cond) in deps {
            let dep = dep.as_str().expect("dependency name");
            assert!(
                names.contains(&dep),
                "{name} depends on unknown service {dep}"
            );
            let condition = cond["condition"].as_str().expect("a condition");
            match condition {
                "service_healthy" => assert!(
                    !service(dep)["healthcheck"].is_badvalue(),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                ),
                "service_completed_successfully" => assert_eq!(
                    service(dep)["restart"].as_str(),
                    Some("no"),
                    "{name} waits for {dep} to complete: {dep} must be a one-shot (restart: \"no\")"
                ),
                "service_started" => {}
                other => panic!("{name} → {dep}: unknown condition {other}"),
            }
        }
    }
    let condition = |svc: &str, dep: &str| {
        service(svc)["depends_on"][dep]["condition"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        condition("migrate", "postgres").as_deref(),
        Some("service_healthy")
    );
    for svc in ["api", "worker"] {
        assert_eq!(
            condition(svc, "migrate").as_deref(),
            Some("service_completed_successfully"),
            "{svc} must wait for the one-shot migration"
        );
        assert_eq!(
            condition(svc, "rabbitmq").as_deref(),
            Some("service_healthy")
        );
    }
    assert_eq!(
        condition("nginx", "api").as_deref(),
        Some("service_healthy")
    );
    assert_eq!(service("api")["deploy"]["replicas"].as_i64(), Some(3));
    assert_eq!(service("worker")["deploy"]["replicas"].as_i64(), Some(2));

    // Commands: a binary the image has, and a subcommand that binary accepts.
    let binaries = image_binaries();
    for name in ["migrate", "api", "worker", "keys"] {
        let command = strings(&service(name)["command"]);
        let (bin, args) = command.split_first().expect("a command");
        assert!(
            binaries.contains(bin),
            "{name} runs {bin}, not in the image: {binaries:?}"
        );
        match bin.as_str() {
            "tally-worker" => {
                Command::parse(args).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "tally-api" => assert!(args.is_empty(), "tally-api takes no arguments: {args:?}"),
            "tally" => assert_eq!(
                args[..3],
                ["keys", "init", "--out"],
                "{name}: the keys service keeps the keys with `tally keys init`"
            ),
            other => panic!("{name}: no check for binary {other}"),
        }
    }
    assert_eq!(
        Command::parse(&strings(&service("migrate")["command"])[1..]),
        Ok(Command::Migrate)
    );
    assert_eq!(
        Command::parse(&strings(&service("worker")["command"])[1..]),
        Ok(Command::Run)
    );

    // nginx: port 80, the repository's config, which proxies to the port the API listens on.
    assert_eq!(
        strings(&service("nginx")["ports"]),
        vec!["80:80".to_string()]
    );
    let volumes = strings(&service("nginx")["volumes"]);
    let mount = volumes
        .iter()
        .find(|v| v.ends_with(":/etc/nginx/nginx.conf:ro"))
        .expect("nginx mounts its config read-only");
    let source = mount.split(':').next().expect("source");
    assert_eq!(source, "./nginx/compose.conf");
    assert!(root().join(source).exists(), "{source} missing");
}

#[test]
fn compose_environment_is_understood_by_the_binaries() {
    let doc = compose();
    let nginx = read("nginx/compose.conf");
    for name in ["migrate", "api", "worker", "keys"] {
        let env = environment(&doc["services"][name]);
        let profile = env.get("TALLY_PROFILE").expect("TALLY_PROFILE");
        let tally: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("TALLY_") && *k != "TALLY_PROFILE")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Every key must land somewhere (config ignores unknown keys, so a typo would be
        // silent): each one is checked against the loaded value.
        let s = Settings::load_profile_from(profile, Some(tally.clone()))
            .unwrap_or_else(|e| panic!("{name}: settings refused: {e}"));
        for (key, value) in &tally {
            let loaded = match key.as_str() {
                "TALLY_DATABASE__URL" => s.database.url.expose().to_string(),
                "TALLY_BROKER__URL" => s.broker.url.expose().to_string(),
                "TALLY_API__HOST" => s.api.host.clone(),
                "TALLY_API__PORT" => s.api.port.to_string(),
                "TALLY_WORKER__METRICS_ADDR" => s.worker.metrics_addr.clone(),
                other => panic!("{name}: {other} is not checked by this test; add it"),
            };
            assert_eq!(&loaded, value, "{name}: {key}");
        }
        assert!(
            !s.debug.enabled,
            "{name}: debug routes must be off in compose"
        );
        assert_eq!(s.log.format, "json", "{name}: JSON logs in compose");
        if name == "api" {
            let upstream = format!("server api:{}", s.api.port);
            assert!(
                nginx.contains(&upstream),
                "nginx/compose.conf must proxy to {upstream}"
            );
        }
    }
}

/// `nginx -t` on a config, with `hosts` lines visible to nginx (it resolves upstream names
/// at load time). The compose config names the `api` service, which only Docker's DNS knows:
/// a private mount namespace (root only, as in CI) gives nginx an /etc/hosts where it exists,
/// without touching the machine's.
fn nginx_check(config: &Path, prefix: &Path) {
    let hosts = prefix.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 api\n").unwrap();
    let script = format!(
        "mount --bind '{}' /etc/hosts && exec nginx -t -q -p '{}/' -c '{}' -e '{}/error.log'",
        hosts.display(),
        prefix.display(),
        config.display(),
        prefix.display(),
    );
    let out = Process::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .expect("run unshare (util-linux) and nginx (deploy/local/services.sh installs it)");
    assert!(
        out.status.success(),
        "nginx -t {} failed:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-nginx-t-{}", uuid::Uuid::new_v4().simple()));
    for sub in ["logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    dir
}

#[test]
fn nginx_configs_pass_nginx_t() {
    // The compose config, exactly as mounted into the nginx container.
    let dir = scratch();
    nginx_check(&root().join("nginx/compose.conf"), &dir);

    // The local template, rendered as deploy/local/stack.sh renders it.
    let rendered = nginx::local_config(18080, &[18001], nginx::DEFAULT_LIMITS);
    assert_eq!(
        nginx::leftover_placeholder(&rendered),
        None,
        "a placeholder stack.sh does not know"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, rendered).unwrap();
    nginx_check(&conf, &dir);
    let _ = std::fs::remove_dir_all(&dir);

    // And the check can fail: a broken config is refused.
    let dir = scratch();
    let conf = dir.join("broken.conf");
    std::fs::write(
        &conf,
        read("nginx/compose.conf").replace("limit_req_status 429;", "limit_req_status;"),
    )
    .unwrap();
    let out = Process::new("nginx")
        .args(["-t", "-q", "-p"])
        .arg(format!("{}/", dir.display()))
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nginx -t accepted a broken config");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each proxied `location` of an nginx config with the `proxy_next_upstream` policy it runs
/// under: its own directive, else the server block's (nginx's inheritance).
fn retry_policies(config: &str) -> Vec<(String, String)> {
    let mut server_default = None;
    let mut locations: Vec<(String, Option<String>)> = Vec::new();
    let mut depth = 0usize;
    let mut location_depth = None;
    for line in config.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("location ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            location_depth = Some(depth);
            locations.push((name, None));
        }
        if let Some(policy) = line.strip_prefix("proxy_next_upstream ") {
            let policy = policy.trim_end_matches(';').trim().to_string();
            match location_depth {
                Some(_) => locations.last_mut().expect("in a location").1 = Some(policy),
                None => server_default = Some(policy),
            }
        }
        depth += line.matches('{').count();
        depth -= line.matches('}').count();
        if location_depth.is_some_and(|d| depth <= d) {
            location_depth = None;
        }
    }
    locations
        .into_iter()
        .filter(|(name, _)| !name.starts_with('@'))
        .map(|(name, own)| {
            let policy = own
                .or_else(|| server_default.clone())
                .unwrap_or_else(|| "error timeout (nginx default)".into());
            (name, policy)
        })
        .collect()
}

/// nginx may replay a request on another replica only where a repeat is harmless: `POST
/// /transaction` is idempotent by its id (`non_idempotent`); settlement jobs (a POST) are not
/// replayed once sent; webhook registrations (`PUT`/`DELETE`, which nginx would replay as
/// "idempotent" methods) are never replayed. Both configs agree. The behaviour itself is
/// tested through nginx in `through_nginx.rs`.
#[test]
fn nginx_replays_only_requests_that_are_idempotent_by_id() {
    let rendered = nginx::local_config(18080, &[18001], nginx::DEFAULT_LIMITS);
    let local = retry_policies(&rendered);
    let compose = retry_policies(&read("nginx/compose.conf"));
    assert_eq!(local, compose, "the two configs retry differently");

    let policy = |name: &str| {
        local
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no location {name}: {local:?}"))
    };
    assert!(policy("= /transaction").contains("non_idempotent"));
    // A replica's own 503 is the truth of the request only if no other replica had it.
    assert!(!policy("= /transaction").contains("http_503"));
    for (name, p) in &local {
        if name != "= /transaction" {
            assert!(!p.contains("non_idempotent"), "{name} replays POSTs: {p}");
        }
    }
    assert_eq!(policy("~ ^/account/[^/]+/webhook$"), "off");
    assert!(policy("/").contains("error"), "reads still fail over");
}
