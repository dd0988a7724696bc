//! The key lifecycle (issue 26), against two ingest instances on the real servers: a revoked key is
//! refused by every instance within a second (their reload interval); a key past its expiry is
//! refused at once; a rotation gives a new key while the old one keeps working for its grace
//! period; the listing shows prefixes, scopes, expiry, revocation and the last use, never a secret;
//! the `ingest` binary's `list-keys`, `rotate-key` and `revoke-key` do the same from the command line.

use std::time::{Duration, Instant};

use platform::keys;
use platform::principal::Scope;
use tests::{TestEnv, binary, wait_until};
use time::OffsetDateTime;

async fn status(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    http.get(format!("{url}/v1/customers/c1/quota"))
        .bearer_auth(key)
        .send()
        .await
        .expect("quota")
        .status()
        .as_u16()
}

fn prefix(key: &str) -> &str {
    &key[..keys::PREFIX_LEN]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_is_refused_by_every_instance_within_a_second() {
    let env = TestEnv::new("keys_revoke").await;
    let (a, b) = (env.start_ingest().await, env.start_ingest().await);
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &a.url).await;
    tests::wait_ready(&http, &b.url).await;
    let key = env.key("acme", &[Scope::Read], None).await;
    let other = env.key("acme", &[Scope::Read], None).await;
    for url in [&a.url, &b.url] {
        assert_eq!(status(&http, url, &key).await, 200);
    }
    let revoked = keys::revoke_key(&env.ch(), "acme", prefix(&key))
        .await
        .expect("revoke");
    assert!(revoked.revoked);
    let start = Instant::now();
    for url in [&a.url, &b.url] {
        wait_until(Duration::from_secs(5), "the revocation", || async {
            (status(&http, url, &key).await == 401).then_some(())
        })
        .await;
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "both instances refused the key after {took:?}, not within a second of their reload"
    );
    // Only that key.
    assert_eq!(status(&http, &a.url, &other).await, 200);
    // Revoking it again, or a prefix nobody has, is a clear error.
    let e = keys::revoke_key(&env.ch(), "acme", prefix(&key))
        .await
        .expect_err("already revoked");
    assert!(e.to_string().contains("no live key"), "{e}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_key_is_refused_and_a_rotation_keeps_both_keys_for_its_grace_period() {
    let env = TestEnv::new("keys_rotate").await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let soon = keys::create_key_expiring(
        &env.ch(),
        "acme",
        None,
        &[Scope::Read],
        "short",
        Some(OffsetDateTime::now_utc() + time::Duration::seconds(2)),
    )
    .await
    .expect("key");
    assert_eq!(status(&http, &ingest.url, &soon).await, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(status(&http, &ingest.url, &soon).await, 401, "expired");
    // Rotation: the new key works at once, the old one for the grace period.
    let old = env.key("acme", &[Scope::Read], Some("c1")).await;
    let new = keys::rotate_key(&env.ch(), "acme", prefix(&old), Duration::from_secs(3))
        .await
        .expect("rotate");
    assert_ne!(new, old);
    // A new key works at once, or from the next reload when another unknown key just caused one.
    wait_until(Duration::from_secs(3), "the new key", || async {
        (status(&http, &ingest.url, &new).await == 200).then_some(())
    })
    .await;
    assert_eq!(status(&http, &ingest.url, &old).await, 200);
    let listed = keys::list_keys(&env.ch(), Some("acme"))
        .await
        .expect("list");
    let l = |k: &str| {
        listed
            .iter()
            .find(|x| x.prefix == prefix(k))
            .cloned()
            .expect("listed")
    };
    assert_eq!(
        (l(&new).customer, l(&new).scopes),
        (Some("c1".into()), vec!["read".to_string()])
    );
    assert!(l(&old).expires_at.is_some() && l(&new).expires_at.is_none());
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(
        status(&http, &ingest.url, &old).await,
        401,
        "the grace period ended"
    );
    assert_eq!(status(&http, &ingest.url, &new).await, 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_listed_with_their_last_use_and_the_cli_rotates_and_revokes() {
    let env = TestEnv::new("keys_cli").await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let key = env.key("acme", &[Scope::Read], None).await;
    let unused = env.key("acme", &[Scope::Ingest], None).await;
    assert_eq!(status(&http, &ingest.url, &key).await, 200);
    let used = wait_until(Duration::from_secs(10), "the last use recorded", || async {
        let list = keys::list_keys(&env.ch(), Some("acme")).await.ok()?;
        list.into_iter()
            .find(|k| k.prefix == prefix(&key))
            .and_then(|k| k.last_used_at)
    })
    .await;
    assert!(
        used <= OffsetDateTime::now_utc()
            && used > OffsetDateTime::now_utc() - time::Duration::minutes(1)
    );
    let list = keys::list_keys(&env.ch(), Some("acme"))
        .await
        .expect("list");
    let u = list
        .iter()
        .find(|k| k.prefix == prefix(&unused))
        .expect("listed");
    assert_eq!(u.last_used_at, None);
    // The command line, with the service's configuration from the environment.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary("ingest"))
            .args(args)
            .envs(env.ingest_env(0))
            .output()
            .expect("run ingest");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listing = cli(&["list-keys", "--tenant", "acme", "--json"]);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(
        listing.contains(prefix(&key)) && !listing.contains(&key),
        "never the secret: {listing}"
    );
    let rotated = cli(&[
        "rotate-key",
        "--tenant",
        "acme",
        "--prefix",
        prefix(&key),
        "--grace-secs",
        "60",
    ]);
    let rotated = rotated.trim().to_string();
    assert!(rotated.starts_with("mk_"), "{rotated}");
    // At once, or from the next reload when an unknown key just caused one.
    wait_until(Duration::from_secs(3), "the rotated key", || async {
        (status(&http, &ingest.url, &rotated).await == 200).then_some(())
    })
    .await;
    cli(&["revoke-key", "--tenant", "acme", "--prefix", prefix(&key)]);
    wait_until(Duration::from_secs(5), "the revocation", || async {
        (status(&http, &ingest.url, &key).await == 401).then_some(())
    })
    .await;
    assert_eq!(status(&http, &ingest.url, &rotated).await, 200);
    let bad = std::process::Command::new(binary("ingest"))
        .args(["revoke-key", "--tenant", "acme", "--prefix", "mk_nothing"])
        .envs(env.ingest_env(0))
        .output()
        .expect("run ingest");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no live key"));
    ingest.stop().await;
}
