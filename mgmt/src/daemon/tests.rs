//! In-process daemon tests: real daemons on 127.0.x.y addresses with their
//! own state dirs, driven through the real CLI path over TCP, with brick
//! processes stood in for by a small Python TCP listener (the `kiln brick`
//! executable is the lead's binary).

use super::*;
use crate::cli::{execute, parse::parse, parse::Parsed};
use crate::supervisor::{pid_runs, BrickLaunch};
use std::path::Path;
use std::sync::OnceLock;

/// Listens on `--listen` like a brick would; its argv carries the brick label.
const FAKE_BRICK: &str = r#"
import socket, sys
a = sys.argv
host, port = a[a.index('--listen') + 1].rsplit(':', 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;

fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

pub(crate) struct FakeBricks;

impl BrickLauncher for FakeBricks {
    fn launch(&self, b: &BrickLaunch) -> std::io::Result<tokio::process::Child> {
        tokio::process::Command::new(python())
            .arg("-c")
            .arg(FAKE_BRICK)
            .arg("brick")
            .args(["--volume", &b.volume, "--volume-id", &b.volume_id])
            .arg("--listen")
            .arg(b.listen.to_string())
            .arg("--log-file")
            .arg(&b.log_file)
            .arg(&b.label)
            .kill_on_drop(false)
            .spawn()
    }
}

pub(crate) async fn start_daemon(ip: &str, dir: &Path, memory: bool, port: u16) -> Arc<Daemon> {
    let args = ServerArgs {
        listen: Some(ip.parse().unwrap()),
        state_dir: dir.join("state"),
        log_dir: dir.join("log"),
        port,
    };
    let hooks = Hooks {
        launcher: Arc::new(FakeBricks),
        memory_store: memory,
        local_socket: false,
    };
    Daemon::start(args, hooks).await.unwrap()
}

/// Runs a CLI command against `d` over TCP; returns (exit code, stdout+stderr).
pub(crate) async fn cli(d: &Daemon, words: &str) -> (i32, String) {
    let args: Vec<String> = words.split_whitespace().map(String::from).collect();
    let Parsed::Run(mut opts, req) = parse(&args).unwrap() else {
        panic!("help")
    };
    opts.remote_host = Some(d.bound.to_string());
    let r = execute(&opts, req).await;
    (r.code, format!("{}{}", r.stdout, r.stderr))
}

fn brick_pid(out: &str, label: &str) -> Option<u32> {
    let line = out.lines().find(|l| l.contains(label))?;
    line.split_whitespace().last()?.parse().ok()
}

#[tokio::test]
async fn single_server_volume_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = "127.0.1.2";
    let _reaper = Reaper(vec![tmp.path().join("state")]);
    let d = start_daemon(ip, tmp.path(), true, 0).await;
    let b1 = format!("{ip}:{}/b1", tmp.path().display());
    let b2 = format!("{ip}:{}/b2", tmp.path().display());

    let (code, out) = cli(&d, &format!("volume create vol1 {b1} {b2}")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("root partition"), "{out}");
    let (code, out) = cli(&d, &format!("volume create vol1 {b1} {b2} force")).await;
    assert_eq!((code, out.as_str()), (0, "Creation of volume vol1 has been successful. Please start the volume to access data.\n"));
    assert!(tmp.path().join("b1").is_dir());
    let (code, out) = cli(&d, &format!("volume create vol1 {b1} force")).await;
    assert_eq!(code, 1);
    assert!(out.contains("Volume vol1 already exists"), "{out}");
    let (code, out) = cli(&d, &format!("volume create vol2 {b1} force")).await;
    assert_eq!(code, 1);
    assert!(out.contains("is already part of a volume"), "{out}");

    let (code, out) = cli(&d, "volume info vol1").await;
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "Status: Created\nNumber of Bricks: 2\nTransport-type: tcp\nBricks:\nBrick1: "
        ),
        "{out}"
    );

    let (code, out) = cli(&d, "volume start vol1").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Starting volume vol1 has been successful\n")
    );
    let cfg = d.store.current();
    let ports: Vec<u16> = cfg.volumes["vol1"].bricks.iter().map(|b| b.port).collect();
    // Handed out from 24009 upward, skipping ports other processes hold.
    assert!(
        ports.iter().all(|p| *p >= 24009) && ports[0] != ports[1],
        "{ports:?}"
    );
    let (code, out) = cli(&d, "volume start vol1").await;
    assert_eq!(code, 1);
    assert!(out.contains("already started"), "{out}");

    let (code, out) = cli(&d, "volume status vol1").await;
    assert_eq!(code, 0, "{out}");
    let pid1 = brick_pid(&out, "/b1").expect("brick 1 online");
    assert!(
        out.lines()
            .any(|l| l.contains("/b2") && l.contains(&ports[1].to_string()) && l.contains(" Y ")),
        "{out}"
    );
    assert!(pid_runs(pid1, "/b1"));

    // Detail: real file-system facts of the brick directory.
    let (code, out) = cli(&d, "volume status vol1 detail").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("File System          : ext4") || out.contains("File System          : "),
        "{out}"
    );
    assert!(out.contains("Total Disk Space     : "), "{out}");
    let (_, json) = cli(&d, "--json volume status vol1 detail").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["volumes"][0]["bricks"][0]["detail"]["total_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A brick that dies stays down until `start force`.
    unsafe { libc::kill(pid1 as i32, libc::SIGKILL) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, out) = cli(&d, "volume status vol1").await;
        if out.lines().any(|l| l.contains("/b1") && l.contains(" N ")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "brick never shown offline:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = cli(&d, "volume set vol1 network.ping-timeout 22").await;
    assert_eq!(code, 0);
    let (_, out) = cli(&d, "volume status vol1").await;
    assert!(
        out.lines().any(|l| l.contains("/b1") && l.contains(" N ")),
        "restarted by itself:\n{out}"
    );
    let (code, out) = cli(&d, "volume start vol1 force").await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&d, "volume status vol1").await;
    let pid1b = brick_pid(&out, "/b1").expect("brick 1 back");
    assert_ne!(pid1, pid1b);
    assert!(
        out.contains(&ports[0].to_string()),
        "same port again:\n{out}"
    );

    let (code, out) = cli(&d, "volume info").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("Options Reconfigured:\nnetwork.ping-timeout: 22\n"),
        "{out}"
    );
    let (code, out) = cli(&d, "volume set vol1 network.ping-timeout soon").await;
    assert_eq!(code, 1, "{out}");
    let (code, out) = cli(&d, "volume reset vol1").await;
    assert_eq!((code, out.as_str()), (0, "reset volume successful\n"));

    let (code, out) = cli(&d, "volume delete vol1 --yes").await;
    assert_eq!(code, 1);
    assert!(out.contains("needs to be stopped"), "{out}");
    let (code, out) = cli(&d, "volume stop vol1").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Stopping volume vol1 has been successful\n")
    );
    assert!(!pid_runs(pid1b, "/b1"), "brick still running after stop");
    let (code, out) = cli(&d, "volume status vol1").await;
    assert_eq!(code, 1);
    assert!(out.contains("Volume vol1 is not started"), "{out}");
    let (code, out) = cli(&d, "volume delete vol1 --mode=script").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "Deleting volume vol1 has been successful\n")
    );
    let (code, out) = cli(&d, "volume info").await;
    assert_eq!((code, out.as_str()), (0, "No volumes present\n"));
    d.shutdown().await;
}

#[tokio::test]
async fn create_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = "127.0.1.3";
    let d = start_daemon(ip, tmp.path(), true, 0).await;
    let p = tmp.path().display().to_string();
    let cases = [
        (
            format!("volume create v replica 2 {ip}:{p}/a {ip}:{p}/b {ip}:{p}/c force"),
            "number of bricks is not a multiple of replica count",
        ),
        (
            format!("volume create v replica 1 {ip}:{p}/a force"),
            "replica count should be greater than 1",
        ),
        (
            format!("volume create v replica 2 {ip}:{p}/a {ip}:{p}/b"),
            "Multiple bricks of a replicate volume are present on the same server",
        ),
        (
            format!("volume create v stripe 2 {ip}:{p}/a {ip}:{p}/b"),
            "striped volumes are not supported yet",
        ),
        (
            format!("volume create v disperse 3 {ip}:{p}/a"),
            "dispersed volumes are not supported yet",
        ),
        (
            format!("volume create v transport rdma {ip}:{p}/a"),
            "no RDMA device found",
        ),
        (
            format!("volume create v {ip}:{p}/a {ip}:{p}/a force"),
            "Found duplicate exports",
        ),
        (
            format!("volume create v {ip}:{p}/a {ip}:{p}/a/b force"),
            "one of the bricks contain the other",
        ),
        (
            format!("volume create v node05:{p}/a force"),
            "Host node05 is not in 'Peer in Cluster' state",
        ),
        (
            format!("volume create v {ip}:relative force"),
            "wrong brick type",
        ),
        (format!("volume create bad/name {ip}:{p}/a"), "is invalid"),
    ];
    for (cmd, want) in cases {
        let (code, out) = cli(&d, &cmd).await;
        assert_eq!(code, 1, "{cmd}: {out}");
        assert!(out.contains(want), "{cmd}: wanted {want:?}, got {out}");
        assert!(out.starts_with("volume create: "), "{out}");
    }
    assert!(
        !tmp.path().join("a").exists(),
        "a refused create left a brick directory"
    );
    let (code, out) = cli(&d, "volume start nosuch").await;
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "volume start: nosuch: failed: Volume nosuch does not exist\n"
        )
    );
    let (code, out) = cli(&d, "volume info nosuch").await;
    assert_eq!((code, out.as_str()), (1, "Volume nosuch does not exist\n"));

    // Replicated volumes: with force, two bricks of a set on one server.
    let bricks: Vec<String> = (0..6).map(|i| format!("{ip}:{p}/r{i}")).collect();
    let (code, out) = cli(
        &d,
        &format!(
            "volume create rep replica 2 {} {} force",
            bricks[0], bricks[1]
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&d, "volume info rep").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("\nType: Replicate\n") && out.contains("\nNumber of Bricks: 1 x 2 = 2\n"),
        "{out}"
    );
    let (code, out) = cli(
        &d,
        &format!(
            "volume create drep replica 2 {} force",
            bricks[2..].join(" ")
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&d, "volume info drep").await;
    assert!(
        out.contains("\nType: Distributed-Replicate\n")
            && out.contains("\nNumber of Bricks: 2 x 2 = 4\n"),
        "{out}"
    );
    let cfg = d.store.current();
    assert_eq!(cfg.volumes["rep"].replica_count(), 2);
    assert_eq!(
        cfg.volumes["rep"].spec().kind,
        kiln_core::graph::VolumeKind::Replicate { replica: 2 }
    );
    d.shutdown().await;
}

/// Kills the brick stand-ins a test left running (a failed assertion skips
/// `volume stop`), by the pid files under each state dir.
pub(crate) struct Reaper(pub(crate) Vec<std::path::PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for state in &self.0 {
            let Ok(dir) = std::fs::read_dir(state.join("run")) else {
                continue;
            };
            for ent in dir.flatten() {
                let pid = std::fs::read_to_string(ent.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if let Some(pid) = pid.filter(|p| pid_runs(*p, "--volume-id")) {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Waits until `pred` holds for `d`'s applied config (or fails after 20 s).
pub(crate) async fn wait_cfg(
    d: &Daemon,
    what: &str,
    pred: impl Fn(&kiln_config::PoolConfig) -> bool,
) {
    let mut rx = d.store.subscribe();
    let wait = async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!(
            "{}: {what} never happened; config: {:?}",
            d.bound,
            d.store.current()
        );
    }
}
