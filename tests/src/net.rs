//! The private test network: a "switch" namespace holding a bridge, and one
//! namespace per host (node01.., client) joined to it by a veth pair, each
//! with its own address and a hosts file naming every host. Nothing of it
//! lives in the root namespace, and it all goes away on drop.

use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cmd;
use crate::netns::NetNs;

/// Every name the harness creates starts with this, then the creating
/// process id, `c`, a per-process counter and `-`: `kt4242c0-n1`. A name
/// whose process is gone is a leftover (see `cleanup_stale`).
pub const PREFIX: &str = "kt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One host on the test network.
#[derive(Debug, Clone)]
pub struct Host {
    /// Host name, resolvable in every namespace of the network (`node01`).
    pub name: String,
    /// Its address on the test subnet.
    pub addr: Ipv4Addr,
    /// Its network namespace.
    pub ns: NetNs,
}

/// A bridge in its own namespace plus one namespace per host.
#[derive(Debug)]
pub struct TestNet {
    id: String,
    switch: NetNs,
    hosts: Vec<Host>,
}

impl TestNet {
    /// Builds the network for `names` (at most 99 hosts). Host `i` (0-based)
    /// gets 10.213.R.(i+1), where R is derived from the id: every network
    /// sits behind its own bridge in its own namespace, so concurrent runs
    /// cannot collide even if R repeats.
    pub fn new(names: &[&str]) -> Result<TestNet> {
        anyhow::ensure!(!names.is_empty() && names.len() < 100, "1..99 hosts");
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{pid}c{n}");
        let run = ((pid.wrapping_mul(7).wrapping_add(n)) % 250 + 1) as u8;
        let switch = NetNs::create(&format!("{id}-sw"))?;
        let mut net = TestNet {
            id,
            switch,
            hosts: Vec::new(),
        };
        // From here on, a failure drops `net`, which removes what exists.
        net.build(names, run)?;
        Ok(net)
    }

    fn build(&mut self, names: &[&str], run: u8) -> Result<()> {
        let sw = self.switch.name().to_string();
        cmd::must("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        cmd::must("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let short = short_name(name, i);
            let ns = NetNs::create(&format!("{}-{short}", self.id))?;
            let addr = Ipv4Addr::new(10, 213, run, i as u8 + 1);
            self.hosts.push(Host {
                name: name.to_string(),
                addr,
                ns: ns.clone(),
            });
            // Both ends are created directly inside their namespaces, so
            // their names never meet the root namespace's interfaces.
            let port = format!("p{i}");
            cmd::must(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    ns.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &sw,
                ],
            )?;
            cmd::must(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            let cidr = format!("{addr}/24");
            cmd::must(
                "ip",
                &["-n", ns.name(), "addr", "add", &cidr, "dev", "eth0"],
            )?;
            cmd::must("ip", &["-n", ns.name(), "link", "set", "eth0", "up"])?;
        }
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        for h in &self.hosts {
            hosts.push_str(&format!("{}\t{}\n", h.addr, h.name));
        }
        for h in &self.hosts {
            let dir = h.ns.etc_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &hosts)
                .with_context(|| format!("write {}/hosts", dir.display()))?;
        }
        Ok(())
    }

    /// The unique id prefixing every name of this network (`kt4242c0`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// All hosts, in the order given to `new`.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The namespace holding the bridge.
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for h in &self.hosts {
            if let Err(e) = h.ns.destroy() {
                eprintln!("kiln-tests: {e:#}");
            }
        }
        if let Err(e) = self.switch.destroy() {
            eprintln!("kiln-tests: {e:#}");
        }
    }
}

/// `node01` -> `n1`, `client` -> `c`, anything else -> `hN`: keeps
/// namespace names short and readable in `ip netns list`.
fn short_name(name: &str, i: usize) -> String {
    if let Some(num) = name
        .strip_prefix("node")
        .and_then(|s| s.parse::<u32>().ok())
    {
        format!("n{num}")
    } else if name == "client" {
        "c".to_string()
    } else {
        format!("h{i}")
    }
}
