//! Three-server Raft config store in one process behind `SimNet`: forming
//! the pool, forwarding, partitions, kills and restarts, leader loss,
//! snapshot catch-up, removal, rejected commands.

mod common;

use common::{create_volume, test_options, wait_until, Cluster};
use kiln_config::{Command, ConfigError, ConfigStore, RaftOptions, StoreError};
use std::time::{Duration, Instant};

fn volume_count(n: usize) -> impl Fn(&kiln_config::PoolConfig) -> bool {
    move |c| c.volumes.len() == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_forward_and_converge() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Proposed on a follower: forwarded, and applied there on return.
    c.node(follower)
        .propose(create_volume("fwd"))
        .await
        .unwrap();
    assert!(c.node(follower).current().volumes.contains_key("fwd"));
    // Proposed on every server in turn.
    for id in 1..=3 {
        c.node(id)
            .propose(create_volume(&format!("on{id}")))
            .await
            .unwrap();
        assert!(c
            .node(id)
            .current()
            .volumes
            .contains_key(&format!("on{id}")));
    }
    c.converge("all servers hold 4 volumes", volume_count(4))
        .await;
    let configs: Vec<_> = c.running().iter().map(|n| n.current()).collect();
    assert!(configs.windows(2).all(|w| w[0] == w[1]));
    assert!(c.net.delivered.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_command_is_rejected_everywhere() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    c.node(2).propose(create_volume("dup")).await.unwrap();
    for id in 1..=3 {
        let err = c.node(id).propose(create_volume("dup")).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Rejected(ConfigError::VolumeExists(ref v)) if v == "dup"),
            "server {id}: {err:?}"
        );
    }
    c.converge("one volume everywhere", volume_count(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_minority_fails_majority_works_then_catches_up() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    let leader = c.leader().await;
    let lonely = (1..=3).find(|id| *id != leader).unwrap();
    c.net.isolate(&Cluster::addr(lonely));

    for i in 0..5 {
        c.node(leader)
            .propose(create_volume(&format!("maj{i}")))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let err = c
        .node(lonely)
        .propose(create_volume("minority"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoQuorum(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(13),
        "NoQuorum took {:?}",
        started.elapsed()
    );
    assert!(!c.node(lonely).current().volumes.contains_key("maj0"));

    c.net.heal();
    c.converge("the isolated server caught up", volume_count(5))
        .await;
    assert!(!c.node(leader).current().volumes.contains_key("minority"));
    c.node(lonely)
        .propose(create_volume("after-heal"))
        .await
        .unwrap();
    c.converge("all see the post-heal volume", volume_count(6))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_catches_up() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    let old = c.leader().await;
    c.net.isolate(&Cluster::addr(old));
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();

    // The majority elects a new leader and goes on.
    let mut new_leader = None;
    wait_until(
        Duration::from_secs(15),
        "the majority elects a new leader",
        || {
            let l = c.node(others[0]).leader_id();
            new_leader = l.filter(|l| *l != old && c.node(others[1]).leader_id() == Some(*l));
            new_leader.is_some()
        },
    )
    .await;
    c.node(others[1])
        .propose(create_volume("new-term"))
        .await
        .unwrap();
    // The old leader, alone, cannot commit.
    let err = c
        .node(old)
        .propose(create_volume("stale"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoQuorum(_)), "{err:?}");

    c.net.heal();
    c.converge("the old leader caught up", |cfg| {
        cfg.volumes.contains_key("new-term") && !cfg.volumes.contains_key("stale")
    })
    .await;
    c.leader().await;
    c.node(old).propose(create_volume("back")).await.unwrap();
    c.converge(
        "all see the volume proposed on the old leader",
        volume_count(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_and_restarts() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    c.node(1).propose(create_volume("before")).await.unwrap();
    let old = c.leader().await;
    c.kill(old).await;
    let killed_at = Instant::now();

    let new_leader = c.leader().await;
    assert_ne!(new_leader, old);
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "new leader after {:?}",
        killed_at.elapsed()
    );
    let survivor = (1..=3).find(|id| *id != old && *id != new_leader).unwrap();
    c.node(survivor)
        .propose(create_volume("while-down"))
        .await
        .unwrap();

    c.start(old).await;
    c.converge("the restarted server caught up", volume_count(2))
        .await;
    c.node(old)
        .propose(create_volume("after-restart"))
        .await
        .unwrap();
    c.converge("three volumes everywhere", volume_count(3))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_catches_up_from_a_snapshot() {
    // Compact hard, so the returning server's missing entries are gone from
    // the leader's log and only a snapshot can bring it up to date.
    let opts = RaftOptions {
        snapshot_every: 4,
        keep_after_snapshot: 0,
        ..test_options()
    };
    let c = Cluster::new(opts);
    c.form(3).await;
    let leader = c.leader().await;
    let down = (1..=3).find(|id| *id != leader).unwrap();
    c.node(leader)
        .propose(create_volume("v-before"))
        .await
        .unwrap();
    c.converge("first volume everywhere", volume_count(1)).await;
    c.kill(down).await;

    for i in 0..16 {
        c.node(leader)
            .propose(create_volume(&format!("v{i:02}")))
            .await
            .unwrap();
    }
    c.node(leader)
        .propose(Command::DeleteVolume {
            name: "v-before".into(),
        })
        .await
        .unwrap();
    assert!(c.dir(leader).join("raft-snapshot.json").exists());

    let back = c.start(down).await;
    assert_eq!(
        back.current().volumes.len(),
        1,
        "restarted with its own last config"
    );
    c.converge("the restarted server installed the snapshot", |cfg| {
        cfg.volumes.len() == 16 && !cfg.volumes.contains_key("v-before")
    })
    .await;
    // And it keeps up from the log afterwards.
    back.propose(create_volume("tail")).await.unwrap();
    c.converge("tail volume everywhere", volume_count(17)).await;

    // Its own restart keeps the installed state.
    let expected = back.current();
    c.kill(down).await;
    let again = c.start(down).await;
    assert_eq!(again.current(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probed_server_joins_instead_of_initializing() {
    let c = Cluster::new(test_options());
    c.form(1).await;
    let fresh = c.start(2).await;
    c.node(1).propose(create_volume("early")).await.unwrap();
    c.node(1).add_server(2, Cluster::addr(2)).await.unwrap();
    // Adding it replicated the log to it; initializing now is a no-op.
    fresh.initialize_single().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "server 2 is a voter with the log",
        || fresh.is_member() && fresh.current().volumes.contains_key("early"),
    )
    .await;
    assert_eq!(fresh.status().voters.len(), 2);
    // add_server is idempotent.
    c.node(2).add_server(2, Cluster::addr(2)).await.unwrap();

    // A server that started a pool of its own is refused.
    let foreign = c.start(3).await;
    foreign.initialize_single().await.unwrap();
    foreign.propose(create_volume("foreign")).await.unwrap();
    let err = c.node(1).add_server(3, Cluster::addr(3)).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert!(!foreign.current().volumes.contains_key("early"));
    // An unreachable server cannot be added, and nothing changes.
    let err = c.node(1).add_server(4, Cluster::addr(4)).await.unwrap_err();
    assert!(matches!(err, StoreError::NoQuorum(_)), "{err:?}");
    assert_eq!(c.node(1).status().voters.len(), 2);
    assert!(c.node(1).status().learners.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_servers_stop_being_members() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    // Removed from a server that is not the leader (forwarded).
    let leader = c.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let caller = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    c.node(caller).remove_server(victim).await.unwrap();
    let rest: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    wait_until(
        Duration::from_secs(10),
        "the removed server knows it is out",
        || {
            !c.node(victim).is_member()
                && rest
                    .iter()
                    .all(|id| !c.node(*id).status().voters.contains_key(&victim))
        },
    )
    .await;
    c.kill(victim).await;
    // Two servers, both needed, both up: proposals work.
    c.node(rest[0])
        .propose(create_volume("pair"))
        .await
        .unwrap();
    c.converge("both remaining servers have it", volume_count(1))
        .await;
    // Idempotent.
    c.node(rest[1]).remove_server(victim).await.unwrap();

    // Remove the leader itself.
    let leader = c.leader().await;
    let other = rest.iter().copied().find(|id| *id != leader).unwrap();
    c.node(other).remove_server(leader).await.unwrap();
    wait_until(
        Duration::from_secs(15),
        "the last server leads alone",
        || {
            let st = c.node(other).status();
            st.leader_id == Some(other) && st.voters.len() == 1 && !c.node(leader).is_member()
        },
    )
    .await;
    c.node(other).propose(create_volume("solo")).await.unwrap();
    assert_eq!(c.node(other).current().volumes.len(), 2);
    // The last server cannot be removed.
    let err = c.node(other).remove_server(other).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_pool_restarts_from_disk() {
    let c = Cluster::new(test_options());
    c.form(3).await;
    for id in 1..=3 {
        c.node(id)
            .propose(create_volume(&format!("v{id}")))
            .await
            .unwrap();
    }
    c.converge("three volumes everywhere", volume_count(3))
        .await;
    let before = c.node(1).current();
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        let s = c.start(id).await;
        assert_eq!(s.current(), before, "server {id} restarted with its config");
        // Not a fresh server: this must not found a pool of its own.
        s.initialize_single().await.unwrap();
    }
    c.leader().await;
    for id in 1..=3 {
        assert_eq!(c.node(id).status().voters.len(), 3);
    }
    c.node(3).propose(create_volume("after")).await.unwrap();
    c.converge("the pool works after a full restart", volume_count(4))
        .await;
}
