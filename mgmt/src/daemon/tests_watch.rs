//! Volume specs pushed to mounted clients (`WatchSpec`), in process: a
//! real daemon, the client-side watcher (`watch_volume_spec`) starting on
//! an unreachable server and falling back to the next, an option change
//! pushed, a stop/start that changes nothing not pushed, and a held watch
//! answered `Ok` when its wait is over.

use super::tests::{cli, start_daemon, Reaper};
use crate::client::connect_tcp;
use crate::proto::{MgmtReply, MgmtRequest};
use std::time::{Duration, Instant};

#[tokio::test]
async fn option_change_reaches_a_watching_client() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = "127.0.1.40";
    let _reaper = Reaper(vec![tmp.path().join("state")]);
    let d = start_daemon(ip, tmp.path(), true, 0).await;
    let b1 = format!("{ip}:{}/b1", tmp.path().display());
    let b2 = format!("{ip}:{}/b2", tmp.path().display());
    let (code, out) = cli(&d, &format!("volume create vol1 replica 2 {b1} {b2} force")).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&d, "volume start vol1").await;
    assert_eq!(code, 0, "{out}");
    let servers = vec!["127.0.0.9:1".to_string(), d.bound.to_string()];
    let spec = crate::fetch_volume_spec(&servers, "vol1").await.unwrap();

    let mut rx = crate::watch_volume_spec(servers, "vol1".into(), spec.clone());
    // Let the watcher fail over to the live server and settle there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, out) = cli(&d, "volume set vol1 cluster.quorum-type fixed").await;
    assert_eq!(code, 0, "{out}");
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("the option change was not pushed")
        .unwrap();
    let pushed = rx.borrow_and_update().clone();
    assert_eq!(pushed.option("cluster.quorum-type", "none"), "fixed");
    assert_eq!(pushed.bricks, spec.bricks);

    // Stop and start: the bricks come back on their ports, the graph is the
    // same, nothing is pushed.
    let (code, out) = cli(&d, "volume stop vol1").await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&d, "volume start vol1").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .is_err(),
        "a spec building the same graph was pushed: {:?}",
        rx.borrow()
    );

    // A watch with nothing new is answered Ok when its wait is over.
    let (mut conn, _, _) = connect_tcp(&d.bound.to_string()).await.unwrap();
    let started = Instant::now();
    let (reply, _) = conn
        .call(
            &MgmtRequest::WatchSpec {
                volume: "vol1".into(),
                known: Some(pushed.clone()),
                wait_secs: 1,
            },
            bytes::Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(matches!(reply, MgmtReply::Ok), "{reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // An older spec than the client's is never sent back.
    let (reply, _) = conn
        .call(
            &MgmtRequest::WatchSpec {
                volume: "vol1".into(),
                known: Some(kiln_core::graph::VolumeSpec {
                    generation: pushed.generation + 100,
                    ..spec.clone()
                }),
                wait_secs: 1,
            },
            bytes::Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(matches!(reply, MgmtReply::Ok), "{reply:?}");
    // A volume that does not exist is refused.
    let (reply, _) = conn
        .call(
            &MgmtRequest::WatchSpec {
                volume: "nosuch".into(),
                known: None,
                wait_secs: 1,
            },
            bytes::Bytes::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(matches!(reply, MgmtReply::Error(_)), "{reply:?}");

    let (code, out) = cli(&d, "volume stop vol1").await;
    assert_eq!(code, 0, "{out}");
    drop(rx);
    d.shutdown().await;
}
