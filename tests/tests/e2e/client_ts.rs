//! The TypeScript package (`clients/typescript`) against the real stack: its node tests (node's
//! built-in runner) and, in headless Chromium, the React hook and components on the package's
//! example page (`clients/typescript/example`, driven by `tests/browser/client_page.mjs` with
//! playwright-core, as the dashboard test does), screenshots into `docs/screenshots/clients-*`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use platform::principal::Scope;
use tests::billing::{Fake, billing_config, start_billing_with};
use tests::{TestEnv, workspace_root};

/// The package folder, built (tsc, and the example page with esbuild), or a panic that says how
/// to install what is missing. Builds are serialized with `flock` (tests run in parallel).
fn built_package() -> PathBuf {
    let dir = workspace_root().join("clients/typescript");
    assert!(
        dir.join("node_modules/typescript/package.json").exists()
            && dir.join("node_modules/esbuild/package.json").exists(),
        "clients/typescript's npm packages are missing: run `bash scripts/install.sh chromium`"
    );
    let status = std::process::Command::new("flock")
        .arg(dir.join("node_modules/.build.lock"))
        .args([
            "sh",
            "-c",
            "npm run --silent build && npm run --silent build:example",
        ])
        .current_dir(&dir)
        .status()
        .expect("flock + npm run");
    assert!(status.success(), "building clients/typescript failed");
    dir
}

/// Runs `node args...` in `dir` with `vars`; returns stdout, panicking with the output on failure.
async fn node(dir: &std::path::Path, args: &[&str], vars: &[(&str, String)]) -> String {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("node finished within 300 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- node {args:?} stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "node {args:?} failed ({})",
        out.status
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_typescript_client_passes_its_node_tests_against_the_real_stack() {
    let dir = built_package();
    let env = TestEnv::new("client_ts").await;
    let (agg, _) = env.start_aggregator().await;
    let fake = Fake::start().await;
    let sync = start_billing_with(&fake, billing_config(&env, &fake)).await;
    let mut cfg = env.ingest_config();
    cfg.billing_url = sync.running.url.clone();
    let ingest = env.start_ingest_with(cfg).await;
    tests::wait_ready(&reqwest::Client::new(), &ingest.url).await;
    let tenant = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let customer = env
        .key("acme", &[Scope::Read, Scope::Ingest], Some("ts_seed"))
        .await;
    let out = node(
        &dir,
        &["--test", "--test-reporter=spec", "test/"],
        &[
            ("METER_API", ingest.url.clone()),
            ("METER_BILLING", sync.running.url.clone()),
            ("METER_KEY", tenant),
            ("METER_CUSTOMER_KEY", customer),
        ],
    )
    .await;
    assert!(out.contains("fail 0"), "{out}");
    ingest.stop().await;
    sync.running.stop().await;
    agg.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_react_hook_and_components_work_in_chromium() {
    let dir = built_package();
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let browser = workspace_root().join("tests/browser");
    assert!(
        browser
            .join("node_modules/playwright-core/package.json")
            .exists()
            && std::path::Path::new(&chromium).exists(),
        "browser test tools missing; run `bash scripts/install.sh chromium`"
    );
    let env = TestEnv::new("client_page").await;
    let (agg, _) = env.start_aggregator().await;
    let port = tests::servers::free_port();
    let page = format!("http://127.0.0.1:{port}/");
    let fake = Fake::start().await;
    let mut bcfg = billing_config(&env, &fake);
    bcfg.stripe.success_url = format!("{page}?checkout=success");
    bcfg.stripe.cancel_url = format!("{page}?checkout=cancel");
    bcfg.stripe.portal_return_url = page.clone();
    let sync = start_billing_with(&fake, bcfg).await;
    let mut cfg = env.ingest_config();
    cfg.billing_url = sync.running.url.clone();
    let ingest = env.start_ingest_with(cfg).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let both = [Scope::Read, Scope::Ingest];
    let k_warn = env.key("acme", &both, Some("c_warn")).await;
    let k_limit = env.key("acme", &both, Some("c_limit")).await;
    let tenant = env.key("acme", &[Scope::Ingest, Scope::Read], None).await;
    let mut events: Vec<serde_json::Value> = (0..85)
        .map(|i| tests::event(&format!("w{i}"), "c_warn", "redact", 1))
        .collect();
    events.extend((0..100).map(|i| tests::event(&format!("l{i}"), "c_limit", "report", 1)));
    tests::send_all(&http, &ingest.url, &tenant, &events, 100).await;
    let api = client::Client::new(&ingest.url, &tenant).expect("client");
    for (c, n) in [("c_warn", 85.0), ("c_limit", 100.0)] {
        tests::wait_until(
            Duration::from_secs(30),
            "the quota view has the usage",
            || async { (api.quota(c, None, None).await.ok()?.used == n).then_some(()) },
        )
        .await;
    }
    let artifacts = workspace_root().join(".data/artifacts/client-page");
    let update = std::env::var("CP_UPDATE_SCREENSHOTS").unwrap_or_default();
    let out = node(
        &workspace_root(),
        &[browser
            .join("client_page.mjs")
            .to_str()
            .expect("utf-8 path")],
        &[
            ("CP_PORT", port.to_string()),
            ("CP_API", ingest.url.clone()),
            ("CP_BILLING", sync.running.url.clone()),
            ("CP_STRIPE", fake.url.clone()),
            ("CP_KEY_WARN", k_warn),
            ("CP_KEY_LIMIT", k_limit),
            ("CP_ARTIFACTS", artifacts.display().to_string()),
            ("CP_UPDATE_SCREENSHOTS", update),
            ("CHROMIUM_BIN", chromium),
        ],
    )
    .await;
    assert!(out.contains("browser checks: 8 ok"), "{out}");
    let _ = dir;
    ingest.stop().await;
    sync.running.stop().await;
    agg.stop().await;
    fake.stop().await;
}
