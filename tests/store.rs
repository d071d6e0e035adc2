//! Bans that outlive the process (`[store]`): an admin ban after a restart, the gateway's own
//! bans after `kill -9`, expiry, a corrupt store refused, the bootstrap file merged, and a
//! gateway without a store saying so. Real mosquitto, real MQTT 5 over WebSocket, the store on a
//! temp dir.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::{Ban, BanSource, Subject};
use portcullis::Gateway;
use support::gateway_process::GatewayProcess;
use support::raw_mqtt::RawClient;
use support::{logs, policy_gw, Broker, TestGateway};

/// A gateway on `broker` keeping its bans in `dir`, with `extra` TOML (policy, bootstrap).
fn config(broker: &Broker, dir: &Path, extra: &str) -> String {
    let store = format!("[store]\ndir = {}\n{extra}", support::ws::toml_path(dir));
    policy_gw::config(broker.addr, &store)
}

/// One MQTT 5 CONNECT over /mqtt: the CONNACK code (a refusal closes the connection).
async fn connack(gw_ws: &str, id: &str) -> u8 {
    let mut dev = RawClient::ws(gw_ws, Version::V5).await;
    let code = dev.connect(&wire::connect(id, 30, Version::V5)).await;
    if code == 0 {
        dev.send_ok(&wire::disconnect(Version::V5)).await;
    }
    dev.until_end().await;
    code
}

fn admin_ban(id: &str, lasting: Duration) -> Ban {
    let now = SystemTime::now();
    Ban {
        subject: Subject::ClientId(id.into()),
        reason: "stolen credentials".into(),
        source: BanSource::admin("ops"),
        created: now,
        expires: Some(now + lasting),
    }
}

#[tokio::test]
async fn an_admin_ban_is_enforced_again_after_a_restart() {
    let broker = Broker::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&broker, dir.path(), "");
    let mut gw = TestGateway::start(&toml).await;
    gw.gw()
        .ban(admin_ban("meter-stolen", Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-stolen").await, 0x8A);
    gw.shutdown().await;

    let gw = TestGateway::start(&toml).await;
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-stolen").await, 0x8A);
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-honest").await, 0);
}

#[tokio::test]
async fn the_gateways_own_ban_survives_kill_9() {
    let broker = Broker::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // Flapping: a fourth CONNECT within the minute is refused with a strike; two strikes ban.
    let policy = "[policy.classes.default]\nmax_connections = 10\n[policy.connects]\nper_client_per_minute = 3\n[policy.strikes]\nthreshold = 2\n";
    let toml = config(&broker, dir.path(), policy);
    let mut process = GatewayProcess::start_logging(&toml, "info,portcullis::store=debug").await;
    let url = format!("ws://{}/mqtt", process.addrs[0]);
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(connack(&url, "flapper").await);
    }
    assert_eq!(codes, [0, 0, 0, 0x9F, 0x9F, 0x8A]);
    // Written behind within a second: wait for the commit, then give it no chance to do more.
    process.wait_for_log(&["bans persisted", "changes=1"]).await;
    process.kill9();

    let gw = TestGateway::start(&toml).await;
    assert_eq!(connack(&gw.ws_url("/mqtt"), "flapper").await, 0x8A);
}

#[tokio::test]
async fn an_expired_ban_is_neither_enforced_nor_kept() {
    let broker = Broker::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // A ban that ended a minute ago, and one still running, on record before the start.
    let mut ended = admin_ban("meter-served", Duration::from_secs(3600));
    ended.created -= Duration::from_secs(7200);
    ended.expires = Some(SystemTime::now() - Duration::from_secs(60));
    let running = admin_ban("meter-serving", Duration::from_secs(3600));
    let store = portcullis::store::BanStore::open(dir.path()).unwrap();
    store.put(&[ended, running]).unwrap();
    drop(store);

    let mut gw = TestGateway::start(&config(&broker, dir.path(), "")).await;
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-served").await, 0);
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-serving").await, 0x8A);
    gw.shutdown().await;
    // Deleted from the file at that start, not just ignored.
    let store = portcullis::store::BanStore::open(dir.path()).unwrap();
    let left = store.load(SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].subject, Subject::ClientId("meter-serving".into()));
}

#[tokio::test]
async fn a_store_that_cannot_be_used_refuses_the_start_and_says_why() {
    let broker = Broker::spawn().await;
    let start = |dir: &Path| {
        let config = portcullis::Config::parse(&config(&broker, dir, ""), None).unwrap();
        async move {
            match Gateway::start(config).await {
                Ok(_) => panic!("started"),
                Err(e) => e,
            }
        }
    };
    // Not a redb file at all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bans.redb");
    std::fs::write(&file, vec![0xA5u8; 8192]).unwrap();
    let e = start(dir.path()).await;
    assert!(
        e.contains(&file.display().to_string()) && e.contains("move it aside"),
        "{e}"
    );
    // Empty: not silently a new store.
    std::fs::write(&file, b"").unwrap();
    let e = start(dir.path()).await;
    assert!(
        e.contains("the file is empty") && e.contains("move it aside"),
        "{e}"
    );
    // A sound file with a record that does not parse.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("bans.redb")).unwrap();
        let t: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("bans");
        let txn = db.begin_write().unwrap();
        txn.open_table(t)
            .unwrap()
            .insert("clientid\0x", "{not json")
            .unwrap();
        txn.commit().unwrap();
    }
    let e = start(dir.path()).await;
    assert!(e.contains("record") && e.contains("move it aside"), "{e}");
    // In use by another gateway: not "move it aside", which would lose its bans.
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestGateway::start(&config(&broker, dir.path(), "")).await;
    let e = start(dir.path()).await;
    assert!(
        e.contains("in use by another process") && !e.contains("move it aside"),
        "{e}"
    );
    first.shutdown().await;
}

#[tokio::test]
async fn the_bootstrap_file_is_merged_at_start_and_a_bad_line_is_refused() {
    let broker = Broker::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bans.csv");
    std::fs::write(
        &csv,
        "as,who,by,reason,at,until\nclientid,meter-evil,mgmt_api,exported from EMQX,2026-01-01T00:00:00Z,\n",
    )
    .unwrap();
    let line = format!("bootstrap_file = {}\n", support::ws::toml_path(&csv));
    let store = dir.path().join("store");
    let toml = config(&broker, &store, &line);
    let mut gw = TestGateway::start(&toml).await;
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-evil").await, 0x8A);
    gw.shutdown().await;
    // Written down as the file's: it stays even when the file is emptied.
    std::fs::write(&csv, "as,who\n").unwrap();
    let mut gw = TestGateway::start(&toml).await;
    assert_eq!(connack(&gw.ws_url("/mqtt"), "meter-evil").await, 0x8A);
    gw.shutdown().await;

    std::fs::write(&csv, "as,who\nclientid,ok\npeerhost,999.1.1.1\n").unwrap();
    let config = portcullis::Config::parse(&toml, None).unwrap();
    let e = Gateway::start(config).await.err().expect("refused");
    assert!(e.contains("bans.csv:3: who:"), "{e}");
}

#[tokio::test]
async fn without_a_store_the_log_says_bans_are_in_memory_only() {
    logs::capture();
    let broker = Broker::spawn().await;
    let _gw = TestGateway::start(&policy_gw::config(broker.addr, "")).await;
    logs::wait_for_line("bans are kept in memory only", &[]).await;
}
