//! The pool's configuration is one replicated state: a server that was down
//! while a volume was created catches up when it returns, and every server
//! then answers `volume info --json` identically; the config survives a
//! restart of every server.

use kiln_tests::{check_prerequisites, wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

fn info(c: &Cluster, i: usize) -> anyhow::Result<Value> {
    c.node(i).kiln_json(&["volume", "info"])
}

/// Waits until every node's `volume info --json` equals node01's.
fn wait_agreement(c: &Cluster, timeout: Duration) -> Value {
    wait_for(
        "every server to agree on `volume info --json`",
        timeout,
        || {
            let first = info(c, 1)?;
            for node in &c.nodes()[1..] {
                let other = info(c, node.index())?;
                if other != first {
                    anyhow::bail!("{} differs:\n{other:#}\nnode01:\n{first:#}", node.name());
                }
            }
            Ok(Some(first))
        },
    )
    .unwrap()
}

#[test]
fn server_down_during_create_catches_up() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(4).unwrap();
    c.node(4).kill().unwrap();

    // Three of four servers are a majority: the create goes through.
    c.create_started_volume("vol1", &[1, 2, 3]).unwrap();
    let on_n1 = info(&c, 1).unwrap();
    assert!(on_n1.to_string().contains("vol1"), "{on_n1:#}");

    c.node(4).start().unwrap();
    let agreed = wait_agreement(&c, Duration::from_secs(60));
    assert_eq!(agreed, on_n1, "the returning server changed the config");
    // And the returned server answers text commands about it too.
    let text = c.node(4).kiln_ok(&["volume", "info", "vol1"]).unwrap();
    assert!(text.contains("vol1") && text.contains("Started"), "{text}");
    // It can also run commands that change the config.
    c.node(4)
        .kiln(&["volume", "stop", "vol1", "--mode=script"])
        .unwrap()
        .ok()
        .unwrap();
    let after = wait_agreement(&c, Duration::from_secs(60));
    assert_ne!(after, agreed, "stop changed nothing");
    assert!(c
        .node(1)
        .kiln_ok(&["volume", "info", "vol1"])
        .unwrap()
        .contains("Stopped"));
}

#[test]
fn config_survives_restart_of_every_server() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(3).unwrap();
    c.create_started_volume("vol1", &[1, 2, 3]).unwrap();
    let before = wait_agreement(&c, Duration::from_secs(30));

    for node in c.nodes() {
        node.kill().unwrap();
    }
    for node in c.nodes() {
        node.start().unwrap();
    }
    let after = wait_agreement(&c, Duration::from_secs(60));
    assert_eq!(after, before, "config changed across a restart");
    // A started volume's bricks are started again by the returning servers.
    for node in c.nodes() {
        node.wait_brick_count(1, Duration::from_secs(30)).unwrap();
    }
    let pool = c.node(2).kiln_ok(&["pool", "list"]).unwrap();
    assert!(pool.contains("node01") && pool.contains("node03"), "{pool}");
}
