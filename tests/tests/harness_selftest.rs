//! The harness without kiln: namespaces on a bridge reach each other by
//! name, a cut-off host is unreachable until healed, processes can be
//! paused and killed, client mounts live in the holder's mount namespace,
//! and everything (including a crashed run's leftovers) is cleaned up.

use kiln_tests::{base_dir, check_prerequisites, cleanup_stale, wait_for, Client, NetNs, TestNet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn ping(ns: &NetNs, target: &str) -> bool {
    ns.run(&["ping", "-c", "1", "-W", "1", target])
        .map(|o| o.success())
        .unwrap_or(false)
}

fn names_of(net: &TestNet) -> Vec<String> {
    net.hosts()
        .iter()
        .map(|h| h.ns.name().to_string())
        .chain([net.switch().name().to_string()])
        .collect()
}

#[test]
fn three_hosts_ping_by_name_cut_off_and_heal() {
    check_prerequisites().unwrap();
    let net = TestNet::new(&["node01", "node02", "node03"]).unwrap();
    let names = names_of(&net);
    let hosts = net.hosts().to_vec();

    // Every host resolves every other by name, to its own address.
    for h in &hosts {
        for other in &hosts {
            let out =
                h.ns.run(&["getent", "hosts", &other.name])
                    .unwrap()
                    .ok()
                    .unwrap();
            assert!(
                out.stdout.starts_with(&other.addr.to_string()),
                "{} resolves {} as {:?}",
                h.name,
                other.name,
                out.stdout
            );
        }
    }
    // Every pair pings by name (the first packet may race the bridge ports).
    for h in &hosts {
        for other in &hosts {
            wait_for(
                &format!("{} to ping {}", h.name, other.name),
                Duration::from_secs(10),
                || Ok(ping(&h.ns, &other.name).then_some(())),
            )
            .unwrap();
        }
    }

    let (n1, n3) = (&hosts[0], &hosts[2]);
    n3.ns.cut_off().unwrap();
    assert!(
        !ping(&n1.ns, "node03"),
        "node03 still answers after cut_off"
    );
    assert!(
        !ping(&n3.ns, "node01"),
        "node03 still reaches out after cut_off"
    );
    assert!(ping(&n3.ns, "127.0.0.1"), "loopback must survive a cut-off");
    assert!(ping(&n1.ns, "node02"), "the others must stay connected");
    n3.ns.heal().unwrap();
    assert!(ping(&n1.ns, "node03"), "node03 unreachable after heal");
    assert!(ping(&n3.ns, "node01"), "node03 cannot reach out after heal");

    drop(net);
    for n in names {
        assert!(
            !Path::new("/run/netns").join(&n).exists(),
            "netns {n} left behind"
        );
        assert!(
            !Path::new("/etc/netns").join(&n).exists(),
            "/etc/netns/{n} left behind"
        );
    }
}

#[test]
fn tcp_between_namespaces_through_setns_threads() {
    check_prerequisites().unwrap();
    let net = TestNet::new(&["node01", "node02"]).unwrap();
    let (a, b) = (&net.hosts()[0], &net.hosts()[1]);
    let listener =
        b.ns.enter(|| TcpListener::bind(SocketAddr::from((b.addr, 0))))
            .unwrap()
            .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong!").unwrap();
        (buf, peer)
    });
    let mut s =
        a.ns.connect(SocketAddr::from((b.addr, port)), Duration::from_secs(5))
            .unwrap();
    s.write_all(b"ping!").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping!");
    assert_eq!(&buf, b"pong!");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(a.addr));
    // The calling thread did not move: it is still where the process started.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/net", std::process::id())).unwrap()
    );
}

#[test]
fn processes_in_a_namespace_pause_resume_and_die() {
    check_prerequisites().unwrap();
    let net = TestNet::new(&["node01"]).unwrap();
    let ns = &net.hosts()[0].ns;
    let mut child = ns
        .command("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for("sleep in the namespace", Duration::from_secs(10), || {
        Ok(ns.pids().contains(&pid).then_some(()))
    })
    .unwrap();
    let state = |pid: i32| -> char {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        s.rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .chars()
            .next()
            .unwrap()
    };
    ns.signal_all(libc::SIGSTOP);
    wait_for("stopped", Duration::from_secs(5), || {
        Ok((state(pid) == 'T').then_some(()))
    })
    .unwrap();
    ns.signal_all(libc::SIGCONT);
    wait_for("running", Duration::from_secs(5), || {
        Ok((state(pid) != 'T').then_some(()))
    })
    .unwrap();
    ns.kill_all().unwrap();
    assert!(ns.pids().is_empty());
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

#[test]
fn client_mounts_live_in_the_holder_namespace() {
    check_prerequisites().unwrap();
    let net = TestNet::new(&["node01", "client"]).unwrap();
    let dir = base_dir().join(format!("{}-selftest", net.id()));
    let client = Client::start(net.host("client").unwrap(), &dir, None).unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs kt-selftest '{0}' && echo hello > '{0}/f' && getent hosts node01",
        mnt.display()
    );
    let out = client.sh(&script).unwrap().ok().unwrap();
    assert!(
        out.stdout.contains("node01"),
        "client resolves node01: {out}"
    );
    // Through /proc/HOLDER/root the test sees the mount ...
    let via_holder = client.host_path(&mnt.join("f"));
    assert_eq!(std::fs::read_to_string(&via_holder).unwrap(), "hello\n");
    std::fs::write(client.host_path(&mnt.join("g")), "from test").unwrap();
    let out = client
        .sh(&format!("cat '{}/g'", mnt.display()))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout, "from test");
    // ... while the root mount namespace does not have it.
    assert!(
        !mnt.join("f").exists(),
        "mount leaked into the root namespace"
    );
    drop(client);
    assert!(!mnt.join("f").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stale_leftovers_of_a_dead_run_are_removed() {
    check_prerequisites().unwrap();
    // A pid that no longer exists: a finished child's.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let name = format!("kt{dead_pid}c0-n1");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let etc = Path::new("/etc/netns").join(&name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hosts"), "").unwrap();
    let scratch = base_dir().join(format!("kt{dead_pid}c0"));
    std::fs::create_dir_all(scratch.join("node01/state")).unwrap();
    let ns = NetNs::existing(&name);
    let mut orphan = ns.command("sleep").arg("1000").spawn().unwrap();
    wait_for("orphan in namespace", Duration::from_secs(10), || {
        Ok((!ns.pids().is_empty()).then_some(()))
    })
    .unwrap();

    let removed = cleanup_stale();
    assert!(removed.contains(&name), "removed {removed:?}");
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!etc.exists());
    assert!(!scratch.exists());
    orphan.wait().unwrap();
}

/// The cluster controls, with a stand-in for `kiln` (a Python script that
/// listens like a server and forks a "brick").
#[test]
fn cluster_controls_with_a_stand_in_server() {
    use kiln_tests::{Cluster, MGMT_PORT};
    check_prerequisites().unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-kiln.py");
    let c = Cluster::with_kiln(2, &fake).unwrap();
    let dir = c.dir().to_path_buf();
    let names = names_of(c.net());
    let greet = |i: usize| -> Option<String> {
        let mut s = c.client().connect(c.node(i).sock(MGMT_PORT)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    };

    // Each node has its own host name and answers on its own address.
    for i in 1..=2 {
        let n = c.node(i);
        let out = n.kiln(&["hostname"]).unwrap().ok().unwrap();
        assert_eq!(out.stdout.trim(), n.name());
        assert_eq!(
            greet(i).as_deref(),
            Some(format!("hello {}\n", n.name()).as_str())
        );
        n.wait_brick_count(1, Duration::from_secs(10)).unwrap();
        let port = wait_for(
            "the stand-in brick to listen",
            Duration::from_secs(10),
            || Ok(n.brick_port(&n.brick_dir("fake"))),
        )
        .unwrap();
        assert_eq!(port, 24009, "{:?}", n.listeners());
    }
    assert!(!c.node(1).kiln(&["bogus"]).unwrap().success());

    // Paused: the kernel still accepts, but nobody answers.
    c.node(2).pause();
    assert_eq!(greet(2), None);
    c.node(2).resume();
    assert!(greet(2).is_some());

    // Cut off: unreachable; healed: back.
    c.node(2).cut_off().unwrap();
    assert_eq!(greet(2), None);
    assert!(greet(1).is_some(), "node01 unaffected");
    c.node(2).heal().unwrap();
    assert!(greet(2).is_some());

    // kill -9 takes the server and its brick; restart brings both back.
    let old = c.node(2).server_pid().unwrap();
    c.node(2).kill().unwrap();
    assert!(c.node(2).pids().is_empty());
    assert!(!c.node(2).is_running());
    assert_eq!(greet(2), None);
    c.node(2).start().unwrap();
    assert_ne!(c.node(2).server_pid(), Some(old));
    assert!(greet(2).is_some());
    c.node(2).kill_bricks().unwrap();
    assert!(c.node(2).brick_pids().is_empty() && c.node(2).is_running());
    c.node(2).restart().unwrap();
    c.node(2)
        .wait_brick_count(1, Duration::from_secs(10))
        .unwrap();

    drop(c);
    assert!(!dir.exists(), "scratch dir left behind");
    for n in names {
        assert!(
            !Path::new("/run/netns").join(&n).exists(),
            "netns {n} left behind"
        );
    }
}
