//! In-process tests of the NFS gateway's supervision: a real daemon (Raft
//! store, CLI over TCP) whose `kiln nfs` is stood in for by a Python TCP
//! listener on port 2049 carrying the real command line; started, restarted
//! and stopped as volumes start, change and stop; shown by `volume status`;
//! adopted by a restarted daemon.

use super::tests::{cli, FakeBricks, Reaper};
use super::*;
use crate::nfs_supervisor::NfsLaunch;
use crate::supervisor::BrickLaunch;
use std::path::Path;

/// Listens on `--listen`:2049 like the gateway would.
const FAKE_NFS: &str = r#"
import socket, sys
a = sys.argv
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((a[a.index('--listen') + 1], 2049))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;

struct FakeWithNfs;

impl BrickLauncher for FakeWithNfs {
    fn launch(&self, b: &BrickLaunch) -> std::io::Result<tokio::process::Child> {
        FakeBricks.launch(b)
    }

    fn runs_nfs(&self) -> bool {
        true
    }

    fn launch_nfs(&self, n: &NfsLaunch) -> std::io::Result<tokio::process::Child> {
        let listen = n.listen.map(|ip| ip.to_string()).unwrap_or_default();
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(FAKE_NFS)
            .arg("nfs")
            .args(["--listen", &listen, "--mgmt", &n.mgmt])
            .args(["--volumes", &n.volumes.join(",")])
            .kill_on_drop(false)
            .spawn()
    }
}

async fn start(ip: &str, dir: &Path) -> Arc<Daemon> {
    let args = ServerArgs {
        listen: Some(ip.parse().unwrap()),
        state_dir: dir.join("state"),
        log_dir: dir.join("log"),
        port: 0,
    };
    let hooks = Hooks {
        launcher: Arc::new(FakeWithNfs),
        memory_store: false,
        local_socket: false,
    };
    Daemon::start(args, hooks).await.unwrap()
}

/// The `--volumes` of a live gateway process.
fn served(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "--volumes")?;
    args.get(i + 1).cloned()
}

/// Waits until the gateway runs, accepts and serves exactly `volumes`;
/// returns its pid.
async fn wait_serving(d: &Daemon, volumes: &str) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = d.nfs.state().await {
            if let Some(pid) = s.pid.filter(|_| s.online) {
                if served(pid).as_deref() == Some(volumes) && s.volumes.join(",") == volumes {
                    return pid;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never served {volumes}: {:?}",
            d.nfs.state().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gone(pid: u32) -> bool {
    !crate::supervisor::pid_runs(pid, "")
}

/// The `NFS Server on ...` lines of `volume status`.
async fn nfs_lines(d: &Daemon, vol: &str) -> Vec<Vec<String>> {
    let (code, out) = cli(d, &format!("volume status {vol}")).await;
    assert_eq!(code, 0, "{out}");
    out.lines()
        .filter(|l| l.starts_with("NFS Server on "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[tokio::test]
async fn one_gateway_follows_the_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = "127.0.4.1";
    let state = tmp.path().join("state");
    let _reaper = Reaper(vec![state.clone()]);
    let _nfs_reaper = NfsReaper(state.join("run/nfs/nfs.pid"));
    let d = start(ip, tmp.path()).await;
    let p = tmp.path().display();
    for (v, b) in [("vol1", "b1"), ("vol2", "b2")] {
        let (code, out) = cli(&d, &format!("volume create {v} {ip}:{p}/{b} force")).await;
        assert_eq!(code, 0, "{out}");
    }
    assert!(
        d.nfs.state().await.unwrap().pid.is_none(),
        "no volume started yet"
    );

    // The first started volume starts the gateway; status shows it.
    let (code, out) = cli(&d, "volume start vol1").await;
    assert_eq!(code, 0, "{out}");
    let pid1 = wait_serving(&d, "vol1").await;
    assert_eq!(
        nfs_lines(&d, "vol1").await,
        [[
            "NFS",
            "Server",
            "on",
            "localhost",
            "2049",
            "Y",
            &pid1.to_string()
        ]]
    );
    assert_eq!(
        crate::supervisor::read_pid(&state.join("run/nfs/nfs.pid")),
        Some(pid1)
    );
    let (_, json) = cli(&d, "--json volume status vol1").await;
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["volumes"][0]["nfs"][0]["pid"], pid1);

    // A second volume: one gateway serving both.
    let (code, out) = cli(&d, "volume start vol2").await;
    assert_eq!(code, 0, "{out}");
    let pid2 = wait_serving(&d, "vol1,vol2").await;
    assert_ne!(pid1, pid2);
    assert!(gone(pid1), "the old gateway still runs");

    // A spec change (an option) restarts it with the new spec.
    let (code, _) = cli(&d, "volume set vol1 nfs.rpc-auth-allow 10.0.0.1").await;
    assert_eq!(code, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pid3 = loop {
        let pid = wait_serving(&d, "vol1,vol2").await;
        if pid != pid2 {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // nfs.disable on takes a volume out; its status has no NFS line.
    let (code, out) = cli(&d, "volume set vol2 nfs.disable on").await;
    assert_eq!(code, 0, "{out}");
    let pid4 = wait_serving(&d, "vol1").await;
    assert!(gone(pid3));
    assert!(nfs_lines(&d, "vol2").await.is_empty());
    assert_eq!(nfs_lines(&d, "vol1").await[0][5], "Y");
    // What `kiln nfs` without --volumes serves.
    assert_eq!(
        crate::fetch_nfs_exports(&["127.0.0.9:1".into(), d.bound.to_string()])
            .await
            .unwrap(),
        ["vol1"]
    );
    let (code, out) = cli(&d, "volume set vol2 nfs.disable maybe").await;
    assert_eq!(code, 1, "{out}");

    // A daemon restart adopts the running gateway.
    d.shutdown().await;
    drop(d);
    let d = start(ip, tmp.path()).await;
    assert_eq!(wait_serving(&d, "vol1").await, pid4, "not adopted");

    // A gateway that dies shows offline until `volume start VOL force`.
    unsafe { libc::kill(pid4 as i32, libc::SIGKILL) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nfs_lines(&d, "vol1").await[0][5] != "N" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never shown offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(nfs_lines(&d, "vol1").await[0][4..], ["N/A", "N", "N/A"]);
    let (code, out) = cli(&d, "volume start vol1 force").await;
    assert_eq!(code, 0, "{out}");
    let pid5 = wait_serving(&d, "vol1").await;
    assert_ne!(pid5, pid4);

    // No exported volume left: the gateway stops, its pid file goes.
    let (code, out) = cli(&d, "volume stop vol1").await;
    assert_eq!(code, 0, "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gone(pid5) || state.join("run/nfs/nfs.pid").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway not stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.nfs.state().await.unwrap().pid.is_none());
    let (code, _) = cli(&d, "volume stop vol2").await;
    assert_eq!(code, 0);
    d.shutdown().await;
}

/// Kills a gateway stand-in a failed test left running.
struct NfsReaper(std::path::PathBuf);

impl Drop for NfsReaper {
    fn drop(&mut self) {
        if let Some(pid) = crate::supervisor::read_pid(&self.0) {
            if crate::supervisor::pid_runs(pid, "--mgmt") {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}
