//! One-server Raft config store: initialize, propose, reject, restart from
//! its directory (also after log compaction), and a real `kill -9` of a
//! process in the middle of proposing.

mod common;

use common::{create_volume, test_options, Cluster};
use kiln_config::{Command, ConfigError, ConfigStore, RaftConfigStore, RaftOptions, StoreError};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_initialize_propose_restart() {
    let c = Cluster::new(test_options());
    let s = c.start(1).await;
    assert!(!s.is_member());
    assert_eq!(s.current(), Default::default());
    s.initialize_single().await.unwrap();
    assert!(s.is_member());
    assert_eq!(s.leader_id(), Some(1));
    // Idempotent.
    s.initialize_single().await.unwrap();

    let mut rx = s.subscribe();
    s.propose(create_volume("vol1")).await.unwrap();
    // Applied here before propose returned, and announced.
    assert!(s.current().volumes.contains_key("vol1"));
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().volumes.contains_key("vol1"));
    s.propose(Command::SetOption {
        name: "vol1".into(),
        key: "nfs.disable".into(),
        value: Some("on".into()),
    })
    .await
    .unwrap();

    // A refused command: committed, refused by the state machine.
    let err = s.propose(create_volume("vol1")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected(ConfigError::VolumeExists(ref v)) if v == "vol1"),
        "{err:?}"
    );
    let err = s
        .propose(Command::DeleteVolume {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected(ConfigError::NoSuchVolume(_))),
        "{err:?}"
    );
    let before = s.current();

    c.kill(1).await;
    let s = c.start(1).await;
    // The applied config is there at once, before any election.
    assert_eq!(s.current(), before);
    assert_eq!(*s.subscribe().borrow(), before);
    assert_eq!(
        before.volumes["vol1"]
            .options
            .get("nfs.disable")
            .map(String::as_str),
        Some("on")
    );
    // Still the same one-server pool: no re-initialization, proposals work.
    s.initialize_single().await.unwrap();
    assert!(s.is_member());
    s.propose(create_volume("vol2")).await.unwrap();
    assert_eq!(s.current().volumes.len(), 2);
    assert_eq!(s.leader_id(), Some(1));
    s.shutdown().await;
    // A stopped store refuses proposals instead of hanging.
    assert!(s.propose(create_volume("vol3")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_compaction_keeps_config() {
    let opts = RaftOptions {
        snapshot_every: 3,
        keep_after_snapshot: 0,
        ..test_options()
    };
    let c = Cluster::new(opts);
    let s = c.start(1).await;
    s.initialize_single().await.unwrap();
    for i in 0..20 {
        s.propose(create_volume(&format!("v{i:02}"))).await.unwrap();
    }
    let before = s.current();
    assert_eq!(before.volumes.len(), 20);
    assert!(
        c.dir(1).join("raft-snapshot.json").exists(),
        "a snapshot was taken"
    );
    c.kill(1).await;

    let s = c.start(1).await;
    assert_eq!(s.current(), before);
    s.propose(create_volume("after")).await.unwrap();
    assert_eq!(s.current().volumes.len(), 21);
    // The dedup table survives too: a fresh command is not mistaken for a
    // retry of an old one.
    s.propose(Command::DeleteVolume { name: "v00".into() })
        .await
        .unwrap();
    assert!(!s.current().volumes.contains_key("v00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_belongs_to_one_node_id() {
    let c = Cluster::new(test_options());
    let s = c.start(1).await;
    s.initialize_single().await.unwrap();
    c.kill(1).await;
    let other = RaftConfigStore::open(&c.dir(1), 7, "x:1".into(), c.net.transport("x:1")).await;
    assert!(matches!(other, Err(StoreError::Storage(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_peer_messages_are_refused() {
    let c = Cluster::new(test_options());
    let s = c.start(1).await;
    s.initialize_single().await.unwrap();
    for junk in [
        &b""[..],
        b"\x00\x01\x02",
        b"{}",
        br#"{"version":1,"from":2,"to":1,"body":"Nope"}"#,
    ] {
        assert!(s.handle_peer_message(junk.to_vec()).await.is_err());
    }
    // Wrong version / wrong node id: answered with a refusal, not acted on.
    for msg in [
        br#"{"version":9,"from":2,"to":1,"body":"Status"}"#.to_vec(),
        br#"{"version":1,"from":2,"to":5,"body":"Status"}"#.to_vec(),
    ] {
        let answer = s.handle_peer_message(msg).await.unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("Refused"));
    }
    s.propose(create_volume("still-fine")).await.unwrap();
}

/// Environment variable that turns `crash_child` into the child process.
const CHILD_DIR: &str = "KILN_RAFT_CRASH_CHILD_DIR";

/// The child of `survives_kill_9`: proposes volumes forever, printing the
/// name of each one acknowledged. Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let net = common::SimNet::new();
    let s = RaftConfigStore::open(
        std::path::Path::new(&dir),
        1,
        "solo:24007".into(),
        net.transport("solo:24007"),
    )
    .await
    .unwrap();
    net.register("solo:24007", s.clone());
    s.initialize_single().await.unwrap();
    for i in 0.. {
        let name = format!("crash{i:04}");
        s.propose(create_volume(&name)).await.unwrap();
        println!("ACK {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read acknowledgements until 30 came, then kill -9 mid-stream.
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("ACK ") {
                acked.push(name.to_string());
                if acked.len() == 30 {
                    break;
                }
            }
        }
        acked
    });
    let acked = tokio::time::timeout(Duration::from_secs(60), acked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.len(), 30, "the child acknowledged proposals");
    // SIGKILL while it is still proposing.
    child.kill().unwrap();
    child.wait().unwrap();

    let c = Cluster::new(test_options());
    let s = RaftConfigStore::open(
        dir.path(),
        1,
        "solo:24007".into(),
        c.net.transport("solo:24007"),
    )
    .await
    .unwrap();
    c.net.register("solo:24007", s.clone());
    let cfg = s.current();
    for name in &acked {
        assert!(
            cfg.volumes.contains_key(name),
            "acknowledged {name} lost after kill -9"
        );
    }
    // And the store goes on.
    s.initialize_single().await.unwrap();
    s.propose(create_volume("after-crash")).await.unwrap();
    assert!(s.current().volumes.contains_key("after-crash"));
}
