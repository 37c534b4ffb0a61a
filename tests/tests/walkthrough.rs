//! The walkthrough of issue 3, verbatim, on real servers: probe, create,
//! start, mount, use, info/status, stop, delete, detach — on two servers
//! and on four.

use kiln_tests::{check_prerequisites, Cluster};
use std::time::Duration;

/// Runs the walkthrough on `n` servers with one brick on each.
fn walkthrough(n: usize) {
    check_prerequisites().unwrap();
    let c = Cluster::new(n).unwrap();
    let n1 = c.node(1);

    // kiln peer probe node02 (and the others), from node01.
    for i in 2..=n {
        let out = n1.kiln(&["peer", "probe", c.node(i).name()]).unwrap();
        assert!(out.success(), "{out}");
    }
    let status = n1.kiln_ok(&["peer", "status"]).unwrap();
    for i in 2..=n {
        assert!(
            status.contains(c.node(i).name()),
            "peer status lacks node{i:02}:\n{status}"
        );
    }
    // Every server agrees on the pool.
    for node in c.nodes() {
        let list = node
            .wait_kiln_ok(&["pool", "list"], Duration::from_secs(30))
            .unwrap();
        assert!(
            list.contains("localhost"),
            "{}: pool list:\n{list}",
            node.name()
        );
        for other in c.nodes() {
            if other.name() != node.name() {
                assert!(
                    list.contains(other.name()),
                    "{}: pool list lacks {}:\n{list}",
                    node.name(),
                    other.name()
                );
            }
        }
    }

    // kiln volume create vol1 node01:/export/brick1 node02:/export/brick1 ...
    // (bricks are on the root filesystem here, hence `force`).
    let mut create = vec!["volume".to_string(), "create".into(), "vol1".into()];
    for node in c.nodes() {
        create.push(node.brick_spec("brick1"));
    }
    let without_force: Vec<&str> = create.iter().map(String::as_str).collect();
    let refused = n1.kiln(&without_force).unwrap();
    assert!(
        !refused.success(),
        "a brick on the root filesystem needs `force`: {refused}"
    );
    create.push("force".into());
    let args: Vec<&str> = create.iter().map(String::as_str).collect();
    n1.kiln(&args).unwrap().ok().unwrap();
    for node in c.nodes() {
        assert!(
            node.brick_dir("brick1").is_dir(),
            "brick dir created on {}",
            node.name()
        );
    }

    // kiln volume start vol1
    n1.kiln(&["volume", "start", "vol1"]).unwrap().ok().unwrap();

    // kiln volume info|status [vol1] [detail], from any server.
    for node in c.nodes() {
        let info = node.kiln_ok(&["volume", "info", "vol1"]).unwrap();
        assert!(info.contains("vol1"), "{info}");
        assert!(
            info.contains("Started"),
            "volume info shows it started:\n{info}"
        );
        for other in c.nodes() {
            assert!(
                info.contains(&other.brick_spec("brick1")),
                "info lacks a brick:\n{info}"
            );
        }
        let all = node.kiln_ok(&["volume", "info"]).unwrap();
        assert!(all.contains("vol1"), "{all}");
    }
    let status = n1
        .wait_kiln_ok(&["volume", "status", "vol1"], Duration::from_secs(30))
        .unwrap();
    for node in c.nodes() {
        assert!(
            status.contains(node.name()),
            "status lacks {}:\n{status}",
            node.name()
        );
    }
    let detail = n1.kiln_ok(&["volume", "status", "vol1", "detail"]).unwrap();
    assert!(!detail.trim().is_empty());
    let json = n1.kiln_json(&["volume", "info", "vol1"]).unwrap();
    assert!(json.to_string().contains("vol1"), "{json}");
    for node in c.nodes() {
        assert_eq!(node.brick_pids().len(), 1, "{} runs one brick", node.name());
    }

    // kiln mount node01:/vol1 /mnt — then use it like a local disk.
    // mount -t kiln node01:/vol1 /mnt (through /sbin/mount.kiln) on four
    // servers; `kiln mount` on two.
    let m = if n >= 4 {
        c.client().mount_fstype("node01:/vol1").unwrap()
    } else {
        c.client().mount("node01:/vol1").unwrap()
    };
    std::fs::create_dir(m.join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(m.join(format!("dir/file{i}")), format!("content {i}\n")).unwrap();
    }
    for i in 0..20 {
        let s = std::fs::read_to_string(m.join(format!("dir/file{i}"))).unwrap();
        assert_eq!(s, format!("content {i}\n"));
    }
    let mut names: Vec<String> = std::fs::read_dir(m.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 20, "{names:?}");
    // Shell tools inside the client namespace see the same tree.
    let out = m
        .sh("ls dir | wc -l && cat dir/file7")
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout, "20\ncontent 7\n");
    // umount /mnt
    m.umount().unwrap();

    // kiln volume stop vol1 (answers the y/n question), delete (script mode).
    let stop = n1.kiln_stdin(&["volume", "stop", "vol1"], "y\n").unwrap();
    assert!(stop.success(), "{stop}");
    let info = n1.kiln_ok(&["volume", "info", "vol1"]).unwrap();
    assert!(info.contains("Stopped"), "{info}");
    for node in c.nodes() {
        node.wait_brick_count(0, Duration::from_secs(30)).unwrap();
    }
    n1.kiln(&["volume", "delete", "vol1", "--yes"])
        .unwrap()
        .ok()
        .unwrap();
    for node in c.nodes() {
        let out = node.kiln(&["volume", "info", "vol1"]).unwrap();
        assert!(
            !out.success() || !out.stdout.contains("vol1"),
            "vol1 still there on {}: {out}",
            node.name()
        );
    }
    // kiln peer detach node02 (and the others).
    for i in 2..=n {
        n1.kiln(&["peer", "detach", c.node(i).name()])
            .unwrap()
            .ok()
            .unwrap();
    }
    let list = n1.kiln_ok(&["pool", "list"]).unwrap();
    for i in 2..=n {
        assert!(
            !list.contains(c.node(i).name()),
            "node{i:02} still in pool:\n{list}"
        );
    }
}

#[test]
fn walkthrough_on_two_servers() {
    walkthrough(2);
}

#[test]
fn walkthrough_on_four_servers() {
    walkthrough(4);
}
