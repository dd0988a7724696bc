//! Checks docker-compose.yml without Docker: service wiring, ports, and that each service's environment loads into its real config.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use secrecy::ExposeSecret;
use serde_yaml::Value;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");

/// Variables of the Rust services that are not read by their config loader.
const NON_CONFIG_VARS: &[&str] = &["RUST_LOG"];

fn compose() -> Value {
    serde_yaml::from_str(COMPOSE).expect("docker-compose.yml is valid YAML")
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["services"]
        .get(name)
        .unwrap_or_else(|| panic!("service `{name}` is missing"))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// Compose interpolation of `text` with no variable set: `${X:-d}` and `${X-d}` give `d`, `${X}`,
/// `${X:?e}` and `$X` give "", `$$` gives `$`. `on_ref` sees each variable name and its default.
fn interpolate(text: &str, mut on_ref: impl FnMut(&str, Option<&str>)) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("unclosed `${{` in {text:?}"));
            let inner = &body[..end];
            let name_len = inner.find(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            let (name, op) = inner.split_at(name_len.unwrap_or(inner.len()));
            let default = op.strip_prefix(":-").or_else(|| op.strip_prefix('-'));
            on_ref(name, default);
            out.push_str(default.unwrap_or(""));
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(after.len());
            if len > 0 {
                on_ref(&after[..len], None);
            } else {
                out.push('$');
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// A service's environment (map or list form), interpolated as if no shell variable were set.
fn environment(svc: &Value) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> = match &svc["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|e| {
                let e = text(e);
                let (k, v) = e
                    .split_once('=')
                    .unwrap_or_else(|| panic!("`{e}` has no value"));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("environment must be a map or a list, got {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(k, v)| (k, interpolate(&v, |_, _| {})))
        .collect()
}

/// Container-side ports of `ports` and `expose` (short `[ip:]host:container[/proto]` or long form).
fn container_ports(svc: &Value) -> Vec<u16> {
    let entries = ["ports", "expose"]
        .into_iter()
        .filter_map(|k| svc[k].as_sequence())
        .flatten();
    entries
        .map(|p| match p {
            Value::Mapping(m) => text(&m[&Value::from("target")]),
            other => text(other),
        })
        .map(|p| {
            let port = p
                .split('/')
                .next()
                .and_then(|p| p.rsplit(':').next())
                .unwrap_or_default();
            port.parse()
                .unwrap_or_else(|_| panic!("bad port entry `{p}`"))
        })
        .collect()
}

fn depends_on(svc: &Value) -> Vec<String> {
    match &svc["depends_on"] {
        Value::Mapping(m) => m.keys().map(text).collect(),
        Value::Sequence(s) => s.iter().map(text).collect(),
        _ => Vec::new(),
    }
}

/// `host:port` → (host, port).
fn host_port(s: &str) -> (&str, u16) {
    let (host, port) = s
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{s}` is not host:port"));
    (
        host,
        port.parse().unwrap_or_else(|_| panic!("bad port in `{s}`")),
    )
}

/// The port of the Kafka listener advertised to other containers (`NAME://kafka:PORT`), checked
/// against the port that listener binds.
fn kafka_internal_port(kafka: &Value) -> u16 {
    let env = environment(kafka);
    let get = |k: &str| {
        env.get(k)
            .unwrap_or_else(|| panic!("kafka lacks {k}"))
            .clone()
    };
    assert_eq!(
        get("KAFKA_AUTO_CREATE_TOPICS_ENABLE"),
        "false",
        "the services create the topics"
    );
    let cluster_id = get("CLUSTER_ID");
    assert!(
        cluster_id.len() == 22
            && cluster_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)),
        "CLUSTER_ID must be a base64url UUID (22 chars), got `{cluster_id}`"
    );
    let advertised = get("KAFKA_ADVERTISED_LISTENERS");
    let (name, addr) = advertised
        .split(',')
        .filter_map(|l| l.split_once("://"))
        .find(|(_, addr)| host_port(addr).0 == "kafka")
        .unwrap_or_else(|| panic!("no listener advertised as kafka:PORT in `{advertised}`"));
    let port = host_port(addr).1;
    let listeners = get("KAFKA_LISTENERS");
    let bound = listeners
        .split(',')
        .filter_map(|l| l.split_once("://"))
        .find(|(n, _)| *n == name);
    let bound =
        bound.unwrap_or_else(|| panic!("listener {name} is advertised but not in KAFKA_LISTENERS"));
    assert_eq!(
        host_port(bound.1).1,
        port,
        "listener {name} binds another port than it advertises"
    );
    port
}

/// Runs `load` with exactly `vars` as the process environment.
#[allow(clippy::result_large_err)] // the closure type is figment's
fn with_env<T>(vars: &BTreeMap<String, String>, load: impl FnOnce() -> T) -> T {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        out = Some(load());
        Ok(())
    });
    out.expect("the jail ran the closure")
}

/// Checks the wiring of a Rust service and returns its environment and listen address.
fn check_service(doc: &Value, name: &str, prefix: &str) -> (BTreeMap<String, String>, SocketAddr) {
    let svc = service(doc, name);
    let env = environment(svc);
    for key in env.keys() {
        assert!(
            key.starts_with(prefix) || NON_CONFIG_VARS.contains(&key.as_str()),
            "{name}: `{key}` lacks the `{prefix}` prefix, the config would ignore it"
        );
    }
    let listen: SocketAddr = env[&format!("{prefix}LISTEN")]
        .parse()
        .expect("listen address");
    assert!(
        listen.ip().is_unspecified(),
        "{name} must listen on 0.0.0.0 to be reachable"
    );
    assert!(
        container_ports(svc).contains(&listen.port()),
        "{name} does not publish its listen port"
    );
    let deps = depends_on(svc);
    for dep in ["kafka", "clickhouse"] {
        assert!(
            deps.iter().any(|d| d == dep),
            "{name} does not depend on {dep}"
        );
    }
    let kafka_port = kafka_internal_port(service(doc, "kafka"));
    for broker in env[&format!("{prefix}KAFKA__BROKERS")].split(',') {
        assert_eq!(
            host_port(broker),
            ("kafka", kafka_port),
            "{name}: broker `{broker}`"
        );
    }
    let url = &env[&format!("{prefix}CLICKHOUSE__URL")];
    let authority = url
        .strip_prefix("http://")
        .expect("http URL")
        .trim_end_matches('/');
    assert_eq!(
        host_port(authority),
        ("clickhouse", 8123),
        "{name}: ClickHouse URL `{url}`"
    );
    assert!(container_ports(service(doc, "clickhouse")).contains(&8123));
    (env, listen)
}

#[test]
fn services_exist() {
    let doc = compose();
    for name in [
        "kafka",
        "clickhouse",
        "ingest",
        "aggregator",
        "billing-sync",
    ] {
        service(&doc, name);
    }
}

#[test]
fn ingest_environment_loads_into_its_config() {
    let (env, listen) = check_service(&compose(), "ingest", ingest::config::ENV_PREFIX);
    let c = with_env(&env, || ingest::Config::load(None)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, listen);
    assert_eq!(c.kafka.brokers, "kafka:9092");
    assert_eq!(c.clickhouse.url, "http://clickhouse:8123");
    assert_eq!(c.clickhouse.database, "metering");
    assert_eq!(c.clickhouse.password.expose_secret(), "");
}

#[test]
fn aggregator_environment_loads_into_its_config() {
    let (env, listen) = check_service(&compose(), "aggregator", aggregator::config::ENV_PREFIX);
    let c = with_env(&env, || aggregator::Config::load(None)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, listen);
    assert_eq!(c.kafka.brokers, "kafka:9092");
    assert_eq!(c.clickhouse.url, "http://clickhouse:8123");
    assert_eq!(c.clickhouse.database, "metering");
    assert_eq!(c.group_id, env["AGGREGATOR_GROUP_ID"]);
}

#[test]
fn billing_sync_environment_loads_into_its_config() {
    let (env, listen) = check_service(&compose(), "billing-sync", billing_sync::config::ENV_PREFIX);
    let c = with_env(&env, || billing_sync::Config::load(None)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, listen);
    assert_eq!(c.kafka.brokers, "kafka:9092");
    assert_eq!(c.clickhouse.url, "http://clickhouse:8123");
    assert_eq!(c.clickhouse.database, "metering");
    assert_eq!(c.stripe.api_base, "https://api.stripe.com/");
    // Every plan the catalog sells through Stripe gets its price from the compose environment.
    let catalog = schemas::Catalog::default();
    let mut sold: Vec<&str> = catalog
        .plans
        .iter()
        .filter(|p| p.stripe_price_env.is_some())
        .map(|p| p.key.as_str())
        .collect();
    sold.sort_unstable();
    let configured: Vec<&str> = c.stripe.prices.keys().map(String::as_str).collect();
    assert_eq!(configured, sold);
    for plan in sold {
        let var = catalog
            .plan(plan)
            .and_then(|p| p.stripe_price_env.clone())
            .unwrap_or_default();
        let raw = service(&compose(), "billing-sync")["environment"]
            [format!("BILLING_STRIPE__PRICES__{}", plan.to_uppercase()).as_str()]
        .as_str()
        .unwrap_or_default()
        .to_string();
        assert!(raw.contains(&var), "{plan}: `{raw}` does not read {var}");
    }
}

#[test]
fn a_misspelled_variable_fails_the_load() {
    let doc = compose();
    let mut env = environment(service(&doc, "ingest"));
    env.insert("INGEST_KAFKA__BROKRS".into(), "kafka:9092".into());
    let err = with_env(&env, || ingest::Config::load(None)).expect_err("unknown key must fail");
    assert!(err.to_string().contains("brokrs"), "{err}");
    let mut env = environment(service(&doc, "aggregator"));
    env.insert("AGGREGATOR_GROUPID".into(), "x".into());
    with_env(&env, || aggregator::Config::load(None)).expect_err("unknown key must fail");
    let mut env = environment(service(&doc, "billing-sync"));
    env.insert("BILLING_STRIPE__SECRETKEY".into(), "x".into());
    with_env(&env, || billing_sync::Config::load(None)).expect_err("unknown key must fail");
}

/// Variables referenced outside comments that have no default and no mention in a comment.
fn undocumented(yaml: &str) -> Vec<String> {
    let (comments, body): (Vec<&str>, Vec<&str>) =
        yaml.lines().partition(|l| l.trim_start().starts_with('#'));
    let mut missing = Vec::new();
    interpolate(&body.join("\n"), |name, default| {
        if default.is_none() && !comments.iter().any(|c| c.contains(name)) {
            missing.push(name.to_owned());
        }
    });
    missing
}

#[test]
fn every_variable_is_documented_or_has_a_default() {
    assert_eq!(undocumented(COMPOSE), Vec::<String>::new());
    assert_eq!(
        undocumented("# A: the a\nx: ${A}\ny: ${B:-1}\nz: $$C ${D} $E"),
        ["D", "E"]
    );
}

#[test]
fn the_production_shape_publishes_only_the_apis_requires_its_secrets_and_limits_every_service() {
    let doc = compose();
    for name in [
        "kafka",
        "clickhouse",
        "ingest",
        "aggregator",
        "billing-sync",
    ] {
        let svc = service(&doc, name);
        let published = svc["ports"].as_sequence().map_or(0, Vec::len);
        let public = matches!(name, "ingest" | "billing-sync");
        assert_eq!(
            published > 0,
            public,
            "{name}: only the ingest and billing-sync publish ports on the host"
        );
        assert!(
            !svc["healthcheck"]["test"].is_null(),
            "{name} has no healthcheck"
        );
        let limits = &svc["deploy"]["resources"]["limits"];
        assert!(
            !limits["cpus"].is_null() && !limits["memory"].is_null(),
            "{name} has no CPU and memory limits"
        );
    }
    // Secrets have no default: compose refuses to start without them (`${X:?message}`).
    for var in [
        "CLICKHOUSE_PASSWORD",
        "DASHBOARD_SECRET",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
    ] {
        let body: Vec<&str> = COMPOSE
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(&format!("${{{var}")))
            .collect();
        assert!(!body.is_empty(), "{var} is not used");
        for line in body {
            assert!(
                line.contains(&format!("${{{var}:?")),
                "{var} must be required, not defaulted: {line}"
            );
        }
    }
    // The ingest's rate limits are on in the production shape.
    let env = environment(service(&doc, "ingest"));
    let config = with_env(&env, || ingest::Config::load(None)).expect("ingest config");
    assert!(config.limits.key_per_sec > 0 && config.limits.tenant_per_sec > 0);
}
