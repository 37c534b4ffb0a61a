//! `Cluster`: N real `kiln server` processes, node01..nodeNN, each in its own
//! network namespace on the private test network, plus the client host;
//! and `Node`, the controls for one server (CLI, kill -9, restart, pause,
//! cut off).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cleanup::{self, Slot};
use crate::client::Client;
use crate::cmd::{self, Output, DEFAULT_TIMEOUT};
use crate::net::{Host, TestNet};
use crate::netns::NetNs;
use crate::procs::{self, Listener};
use crate::wait::{wait_for, wait_until};

/// The management port every server listens on.
pub const MGMT_PORT: u16 = 24007;

fn ready_timeout() -> Duration {
    let secs = std::env::var("KT_READY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// N Kiln servers and a client on a private network. Dropping it kills
/// every process, deletes the namespaces and (unless `KT_KEEP` is set) the
/// scratch dir; if the test is panicking it first prints the servers' logs.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    client: Client,
    net: TestNet,
    dir: PathBuf,
    kiln: PathBuf,
    _slot: Slot,
}

impl Cluster {
    /// Starts `n` servers (node01..) and waits until each accepts
    /// connections on its management port. The servers are not probed into
    /// a pool: see `pool`.
    /// A server counts as ready once its management port accepts and
    /// `kiln pool list` succeeds on it (the port opens before the daemon
    /// answers).
    pub fn new(n: usize) -> Result<Cluster> {
        Cluster::start(n, &crate::kiln_bin()?, true)
    }

    /// `new` with a stand-in binary in place of `kiln` (the harness
    /// self-test); readiness is then only the management port accepting.
    pub fn with_kiln(n: usize, kiln: &Path) -> Result<Cluster> {
        Cluster::start(n, kiln, false)
    }

    fn start(n: usize, kiln: &Path, cli_ready: bool) -> Result<Cluster> {
        anyhow::ensure!((1..=9).contains(&n), "1..=9 nodes");
        let kiln = kiln.to_path_buf();
        cleanup::cleanup_stale();
        let slot = cleanup::acquire_slot(Duration::from_secs(45 * 60))?;
        let names: Vec<String> = (1..=n).map(node_name).chain(["client".into()]).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let net = TestNet::new(&refs)?;
        let dir = cleanup::base_dir().join(net.id());
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let client_host = net.host("client").context("client host")?.clone();
        let client = Client::start(&client_host, &dir.join("client"), Some(kiln.clone()))?;
        let mut nodes = Vec::new();
        for i in 1..=n {
            let host = net.host(&node_name(i)).context("node host")?.clone();
            nodes.push(Node::new(i, host, &dir, &kiln, cli_ready)?);
        }
        let cluster = Cluster {
            nodes,
            client,
            net,
            dir,
            kiln,
            _slot: slot,
        };
        for node in &cluster.nodes {
            node.spawn_server()?;
        }
        for node in &cluster.nodes {
            node.wait_ready()?;
        }
        Ok(cluster)
    }

    /// `new(n)`, then `kiln peer probe` of every other node from node01,
    /// waiting until every node's `pool list` names all of them.
    pub fn pool(n: usize) -> Result<Cluster> {
        let c = Cluster::new(n)?;
        c.probe_all()?;
        Ok(c)
    }

    /// Probes node02.. from node01 and waits for every node to list all.
    pub fn probe_all(&self) -> Result<()> {
        for node in &self.nodes[1..] {
            self.node(1).kiln_ok(&["peer", "probe", node.name()])?;
        }
        for node in &self.nodes {
            wait_for(
                &format!("{} to list every peer in `pool list`", node.name()),
                Duration::from_secs(30),
                || {
                    let out = node.kiln(&["pool", "list"])?;
                    let all = self
                        .nodes
                        .iter()
                        .all(|n| n.name() == node.name() || out.stdout.contains(n.name()));
                    Ok((out.success() && all).then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// Node `i`, 1-based as in `node01`. Panics on a bad index (test bug).
    pub fn node(&self, i: usize) -> &Node {
        assert!(i >= 1 && i <= self.nodes.len(), "no node {i}");
        &self.nodes[i - 1]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The client host.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The test network.
    pub fn net(&self) -> &TestNet {
        &self.net
    }

    /// The cluster's scratch dir (`/tmp/kt<pid>c<n>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kiln binary under test.
    pub fn kiln(&self) -> &Path {
        &self.kiln
    }

    /// `kiln volume create NAME` with brick `K` (0-based) on node `nodes[K]`
    /// (1-based; a node may appear several times), in `export/NAME.bK`, plus `force` (bricks live on the root filesystem),
    /// run on node01, then `volume start`. Returns the brick directories in
    /// brick order.
    pub fn create_started_volume(&self, name: &str, nodes: &[usize]) -> Result<Vec<PathBuf>> {
        let mut args: Vec<String> = vec!["volume".into(), "create".into(), name.into()];
        let mut dirs = Vec::new();
        for (k, i) in nodes.iter().enumerate() {
            let brick = format!("{name}.b{k}");
            args.push(self.node(*i).brick_spec(&brick));
            dirs.push(self.node(*i).brick_dir(&brick));
        }
        args.push("force".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.node(1).kiln_ok(&refs)?;
        self.node(1).kiln_ok(&["volume", "start", name])?;
        // Then wait until every brick process listens, so a mount made next
        // finds them all up.
        for (i, dir) in nodes.iter().zip(&dirs) {
            let node = self.node(*i);
            wait_until(
                &format!("brick {} to listen", node.brick_spec_of(dir)),
                Duration::from_secs(30),
                || node.brick_port(dir).is_some(),
            )?;
        }
        Ok(dirs)
    }

    /// Prints the tail of every server's output and log files to stderr.
    pub fn dump_logs(&self) {
        let mut client_logs = Vec::new();
        collect_files(&self.dir.join("client"), &mut client_logs);
        for f in client_logs
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
        {
            print_tail(f);
        }
        for node in &self.nodes {
            eprintln!("===== {} ({}) =====", node.name(), node.addr());
            let mut files = vec![node.dir().join("server.out")];
            collect_files(&node.log_dir(), &mut files);
            for f in files {
                print_tail(&f);
            }
        }
    }
}

fn print_tail(f: &Path) {
    if let Ok(text) = std::fs::read_to_string(f) {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("--- {} (last {} lines)", f.display(), tail.len());
        for l in tail {
            eprintln!("{l}");
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KT_DUMP_LOGS").is_some() {
            self.dump_logs();
        }
        for node in &self.nodes {
            node.signal_all(libc::SIGCONT);
            if let Err(e) = node.kill() {
                eprintln!("kiln-tests: {}: {e:#}", node.name());
            }
        }
        if let Err(e) = self.client.ns().kill_all() {
            eprintln!("kiln-tests: client: {e:#}");
        }
        cleanup::lazy_umount_under(&self.dir);
        if std::env::var_os("KT_KEEP").is_some() {
            eprintln!("kiln-tests: keeping {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("kiln-tests: remove {}: {e}", self.dir.display());
        }
        // Then the fields drop: the client reaps its holder, the network
        // deletes the namespaces, the slot is released.
    }
}

/// `node01`, `node02`, ...
pub fn node_name(i: usize) -> String {
    format!("node{i:02}")
}

/// One server host: its namespace, directories and `kiln server` process.
#[derive(Debug)]
pub struct Node {
    index: usize,
    host: Host,
    dir: PathBuf,
    kiln: PathBuf,
    cli_ready: bool,
    server: Mutex<Option<Child>>,
}

impl Node {
    fn new(
        index: usize,
        host: Host,
        cluster_dir: &Path,
        kiln: &Path,
        cli_ready: bool,
    ) -> Result<Node> {
        let dir = cluster_dir.join(&host.name);
        for sub in ["state", "log", "export"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("create {}/{sub}", dir.display()))?;
        }
        Ok(Node {
            index,
            host,
            dir,
            kiln: kiln.to_path_buf(),
            cli_ready,
            server: Mutex::new(None),
        })
    }

    /// 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Host name (`node01`), resolvable on every host of the network.
    pub fn name(&self) -> &str {
        &self.host.name
    }

    /// Address the server listens on.
    pub fn addr(&self) -> Ipv4Addr {
        self.host.addr
    }

    /// `addr:port`.
    pub fn sock(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.host.addr, port))
    }

    /// The node's network namespace.
    pub fn ns(&self) -> &NetNs {
        &self.host.ns
    }

    /// The node's scratch dir (`.../node01`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `--state-dir` of its server.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `--log-dir` of its server.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Directory for a brick called `name` on this node (`.../node01/export/NAME`).
    pub fn brick_dir(&self, name: &str) -> PathBuf {
        self.dir.join("export").join(name)
    }

    /// `node01:/.../export/NAME`, as `volume create` takes it.
    pub fn brick_spec(&self, name: &str) -> String {
        format!("{}:{}", self.name(), self.brick_dir(name).display())
    }

    /// `node01:DIR` for a brick directory.
    pub fn brick_spec_of(&self, dir: &Path) -> String {
        format!("{}:{}", self.name(), dir.display())
    }

    /// A command run in this node's network namespace, with the node's
    /// host name in a UTS namespace of its own (`hostname` says `node01`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.host.ns.command(program);
        let hostname = CString::new(self.name()).unwrap_or_default();
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWUTS) != 0
                    || libc::sethostname(hostname.as_ptr(), hostname.as_bytes().len()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Runs `kiln ARGS` on this node (exit code, stdout, stderr).
    pub fn kiln(&self, args: &[&str]) -> Result<Output> {
        self.kiln_timeout(args, DEFAULT_TIMEOUT)
    }

    /// `kiln ARGS` with a deadline.
    pub fn kiln_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut c = self.command(&self.kiln);
        c.args(args);
        cmd::run(c, None, timeout)
    }

    /// `kiln ARGS` with `input` on its standard input (answers to y/n).
    pub fn kiln_stdin(&self, args: &[&str], input: &str) -> Result<Output> {
        let mut c = self.command(&self.kiln);
        c.args(args);
        cmd::run(c, Some(input.as_bytes()), DEFAULT_TIMEOUT)
    }

    /// `kiln ARGS`, failing unless it exits 0; returns stdout.
    pub fn kiln_ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.kiln(args)?.ok()?.stdout)
    }

    /// `kiln ARGS --json`, parsed.
    pub fn kiln_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.kiln_ok(&a)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`kiln {}` printed no JSON: {out}", a.join(" ")))
    }

    /// Runs a `sh -c` script in the node's namespace.
    pub fn sh(&self, script: &str) -> Result<Output> {
        let mut c = self.command("sh");
        c.arg("-c").arg(script);
        cmd::run(c, None, DEFAULT_TIMEOUT)
    }

    /// Starts `kiln server` (same state and log dirs as before) and waits
    /// until it accepts connections. Fails if it is already running.
    pub fn start(&self) -> Result<()> {
        self.spawn_server()?;
        self.wait_ready()
    }

    fn spawn_server(&self) -> Result<()> {
        let mut guard = self
            .server
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(child) = guard.as_mut() {
            if child.try_wait()?.is_none() {
                bail!("{}: server already running", self.name());
            }
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))?;
        let err = out.try_clone()?;
        let mut c = self.command(&self.kiln);
        c.arg("server")
            .arg("--listen")
            .arg(self.addr().to_string())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--log-dir")
            .arg(self.log_dir())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = c
            .spawn()
            .with_context(|| format!("{}: spawn kiln server", self.name()))?;
        *guard = Some(child);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let addr = self.sock(MGMT_PORT);
        let start = Instant::now();
        let timeout = ready_timeout();
        let mut last = String::from("port not open");
        loop {
            if let Some(code) = self.server_exit()? {
                bail!(
                    "{}: kiln server exited ({code}) after {:?}:\n{}",
                    self.name(),
                    start.elapsed(),
                    tail(&self.dir.join("server.out"), 30)
                );
            }
            if self.ns().port_open(addr) {
                if !self.cli_ready {
                    return Ok(());
                }
                let out = self.kiln_timeout(&["pool", "list"], Duration::from_secs(10))?;
                if out.success() {
                    return Ok(());
                }
                last = out.to_string();
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{} not ready after {timeout:?} ({addr}): {last}",
                    self.name()
                );
            }
            std::thread::sleep(cmd::poll_interval(start.elapsed()));
        }
    }

    /// `Some(status)` if the server process has exited.
    fn server_exit(&self) -> Result<Option<String>> {
        let mut guard = self
            .server
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        match guard.as_mut() {
            Some(child) => Ok(child.try_wait()?.map(|s| s.to_string())),
            None => Ok(Some("never started".into())),
        }
    }

    /// Pid of the `kiln server` process, if it runs.
    pub fn server_pid(&self) -> Option<i32> {
        let mut guard = self.server.lock().ok()?;
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id() as i32),
            _ => None,
        }
    }

    /// True if the server process runs.
    pub fn is_running(&self) -> bool {
        self.server_pid().is_some()
    }

    /// Every live process in the node's namespace (server, bricks, CLI calls).
    pub fn pids(&self) -> Vec<i32> {
        self.host.ns.pids()
    }

    /// The brick servers `kiln server` spawned: processes of the node whose
    /// command line starts `kiln brick` (or `INTERPRETER SCRIPT brick`).
    pub fn brick_pids(&self) -> Vec<i32> {
        self.pids()
            .into_iter()
            .filter(|p| {
                procs::cmdline(*p)
                    .split_whitespace()
                    .take(3)
                    .any(|t| t == "brick")
            })
            .collect()
    }

    /// Listening TCP sockets of the node's processes.
    pub fn listeners(&self) -> Vec<Listener> {
        procs::listeners(&self.pids())
    }

    /// The port of the brick process serving `brick_dir` (found from the
    /// brick's command line and its listening socket).
    pub fn brick_port(&self, brick_dir: &Path) -> Option<u16> {
        let want = brick_dir.to_string_lossy();
        self.listeners()
            .into_iter()
            .find(|l| l.cmdline.contains(" brick ") && l.cmdline.contains(&*want))
            .map(|l| l.port)
    }

    /// Sends `sig` to every process of the node.
    pub fn signal_all(&self, sig: i32) {
        self.host.ns.signal_all(sig);
    }

    /// kill -9 of the whole node (server and bricks); waits until they are gone.
    pub fn kill(&self) -> Result<()> {
        self.host.ns.kill_all()?;
        self.reap();
        Ok(())
    }

    /// kill -9 of the `kiln server` process only (bricks keep running).
    pub fn kill_server(&self) -> Result<()> {
        if let Some(pid) = self.server_pid() {
            procs::signal(pid, libc::SIGKILL);
            procs::wait_gone(&[pid], Duration::from_secs(10))?;
        }
        self.reap();
        Ok(())
    }

    /// kill -9 of the brick processes only.
    pub fn kill_bricks(&self) -> Result<()> {
        let pids = self.brick_pids();
        for p in &pids {
            procs::signal(*p, libc::SIGKILL);
        }
        procs::wait_gone(&pids, Duration::from_secs(10))
    }

    /// SIGTERM to every process of the node, SIGKILL after 10 s.
    pub fn stop(&self) -> Result<()> {
        let pids = self.pids();
        for p in &pids {
            procs::signal(*p, libc::SIGTERM);
        }
        if procs::wait_gone(&pids, Duration::from_secs(10)).is_err() {
            self.host.ns.kill_all()?;
        }
        self.reap();
        Ok(())
    }

    fn reap(&self) {
        if let Ok(mut guard) = self.server.lock() {
            if let Some(child) = guard.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            *guard = None;
        }
    }

    /// kill -9 of the node, then a fresh `kiln server` on the same dirs.
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        self.start()
    }

    /// SIGSTOP to every process of the node (a hung machine).
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// SIGCONT to every process of the node.
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Drops all its traffic except loopback (iptables in its namespace).
    pub fn cut_off(&self) -> Result<()> {
        self.host.ns.cut_off()
    }

    /// Undoes `cut_off`.
    pub fn heal(&self) -> Result<()> {
        self.host.ns.heal()
    }

    /// Waits until `kiln ARGS` exits 0 on this node; returns its stdout.
    pub fn wait_kiln_ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        wait_for(
            &format!("`kiln {}` on {}", args.join(" "), self.name()),
            timeout,
            || {
                let out = self.kiln(args)?;
                if out.success() {
                    Ok(Some(out.stdout))
                } else {
                    Err(anyhow::anyhow!("{out}"))
                }
            },
        )
    }

    /// Waits until exactly `n` brick processes run on the node.
    pub fn wait_brick_count(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{} to run {n} bricks", self.name()),
            timeout,
            || self.brick_pids().len() == n,
        )
    }

    /// Waits until no process of the node is left (after an external kill).
    pub fn wait_down(&self, timeout: Duration) -> Result<()> {
        wait_until(&format!("{} down", self.name()), timeout, || {
            self.pids().is_empty()
        })
    }
}

fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut f, &mut s);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
