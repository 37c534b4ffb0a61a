//! Test harness: two real brick servers on loopback, a volume over them, the
//! NFS gateway serving it on free ports, libnfs URLs and command runners,
//! and a minimal raw NFSv3 client over the shared RPC client.

#![allow(dead_code)]

use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig};
use kiln_core::client::Volume;
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_nfs3::{serve_volumes, NfsConfig, NfsServer};
use kiln_portmap::rpc::RpcClient;
use kiln_portmap::XdrWriter;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub bricks: Vec<PathBuf>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub spec: VolumeSpec,
    pub volume: Arc<Volume>,
    pub server: NfsServer,
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Starts `n` bricks, a volume named `tv` over them, and the gateway.
pub async fn start(n: usize, options: &[(&str, &str)]) -> Env {
    start_with(
        n,
        options,
        NfsConfig {
            listen: "127.0.0.1".parse().unwrap(),
            nfs_ports: vec![0],
            mount_port: 0,
            portmap_port: None,
            fd_idle: Duration::from_secs(30),
        },
    )
    .await
}

pub async fn start_with(n: usize, options: &[(&str, &str)], cfg: NfsConfig) -> Env {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut bricks = Vec::new();
    let mut specs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id, true).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = BrickConfig {
            volume: "tv".into(),
            volume_id: id.clone(),
            label: format!("127.0.0.1:{}", path.display()),
            path: path.clone(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        tasks.push(tokio::spawn(async move {
            let _ = serve_listener(cfg, listener).await;
        }));
        specs.push(BrickSpec {
            subvol: format!("tv-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
        bricks.push(path);
    }
    let mut opts = BTreeMap::new();
    opts.insert("network.ping-timeout".to_string(), "5".to_string());
    for (k, v) in options {
        opts.insert(k.to_string(), v.to_string());
    }
    let spec = VolumeSpec {
        name: "tv".into(),
        id,
        kind: VolumeKind::Distribute,
        bricks: specs,
        options: opts,
        generation: 1,
    };
    let volume = Arc::new(Volume::new(spec.clone()));
    volume
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("volume ready");
    let server = serve_volumes(vec![volume.clone()], cfg)
        .await
        .expect("nfs gateway");
    Env {
        dir,
        bricks,
        tasks,
        spec,
        volume,
        server,
    }
}

impl Env {
    pub fn nfs_addr(&self) -> SocketAddr {
        self.server.nfs_addrs()[0]
    }

    pub fn mount_addr(&self) -> SocketAddr {
        self.server.mount_addr()
    }

    /// A libnfs URL for `path` inside the volume (`""` = the export).
    pub fn url(&self, path: &str, extra: &str) -> String {
        format!(
            "nfs://127.0.0.1/tv{}?version=3&nfsport={}&mountport={}{}",
            path,
            self.nfs_addr().port(),
            self.mount_addr().port(),
            extra
        )
    }

    /// A scratch file path outside the bricks.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("scratch");
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }
}

/// Runs a client tool off the reactor; returns (success, stdout, stderr).
pub async fn run(prog: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let prog = prog.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&prog)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("running {prog}: {e} (is libnfs-utils installed?)"));
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

pub fn sha256_file(p: &Path) -> Vec<u8> {
    sha256(&std::fs::read(p).unwrap())
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Raw NFSv3 / MOUNT calls over one TCP connection.
pub struct Raw {
    pub c: RpcClient,
}

pub const NFS: u32 = 100003;
pub const MOUNT: u32 = 100005;

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut c = RpcClient::connect(addr).await.unwrap();
        c.set_auth_sys(0, 0, vec![]);
        Raw { c }
    }

    pub fn as_user(&mut self, uid: u32, gid: u32) {
        self.c.set_auth_sys(uid, gid, vec![]);
    }

    /// MNT v3; returns the handle.
    pub async fn mnt(&mut self, path: &str) -> Result<Vec<u8>, u32> {
        let mut w = XdrWriter::new();
        w.put_string(path.as_bytes());
        let r = self.c.call(MOUNT, 3, 1, w.as_bytes()).await.unwrap();
        let mut x = kiln_portmap::XdrReader::new(&r);
        match x.get_u32().unwrap() {
            0 => Ok(x.get_opaque(64).unwrap().to_vec()),
            s => Err(s),
        }
    }

    /// Calls an NFS procedure; returns (status, rest of the result).
    pub async fn nfs(&mut self, proc_: u32, args: &XdrWriter) -> (u32, Vec<u8>) {
        let r = self.c.call(NFS, 3, proc_, args.as_bytes()).await.unwrap();
        let s = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        (s, r[4..].to_vec())
    }

    /// LOOKUP; returns the handle.
    pub async fn lookup(&mut self, dir: &[u8], name: &str) -> Result<Vec<u8>, u32> {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_string(name.as_bytes());
        let (s, rest) = self.nfs(3, &w).await;
        if s != 0 {
            return Err(s);
        }
        Ok(kiln_portmap::XdrReader::new(&rest)
            .get_opaque(64)
            .unwrap()
            .to_vec())
    }

    /// REMOVE (or RMDIR).
    pub async fn remove(&mut self, dir: &[u8], name: &str, rmdir: bool) -> u32 {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_string(name.as_bytes());
        self.nfs(if rmdir { 13 } else { 12 }, &w).await.0
    }

    /// GETATTR; returns (status, type, mode, uid, gid, size).
    pub async fn getattr(&mut self, fh: &[u8]) -> Result<(u32, u32, u32, u32, u64), u32> {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        let (s, rest) = self.nfs(1, &w).await;
        if s != 0 {
            return Err(s);
        }
        let mut r = kiln_portmap::XdrReader::new(&rest);
        let t = r.get_u32().unwrap();
        let mode = r.get_u32().unwrap();
        let _nlink = r.get_u32().unwrap();
        let uid = r.get_u32().unwrap();
        let gid = r.get_u32().unwrap();
        let size = r.get_u64().unwrap();
        Ok((t, mode, uid, gid, size))
    }

    /// SETATTR mode only (no guard).
    pub async fn chmod(&mut self, fh: &[u8], mode: u32) -> u32 {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        w.put_bool(true);
        w.put_u32(mode);
        for _ in 0..3 {
            w.put_bool(false);
        }
        w.put_u32(0);
        w.put_u32(0);
        w.put_bool(false);
        self.nfs(2, &w).await.0
    }

    /// MKDIR with a mode; returns the handle.
    pub async fn mkdir(&mut self, dir: &[u8], name: &str, mode: u32) -> Result<Vec<u8>, u32> {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_string(name.as_bytes());
        w.put_bool(true);
        w.put_u32(mode);
        for _ in 0..3 {
            w.put_bool(false);
        }
        w.put_u32(0);
        w.put_u32(0);
        let (s, rest) = self.nfs(9, &w).await;
        if s != 0 {
            return Err(s);
        }
        let mut r = kiln_portmap::XdrReader::new(&rest);
        assert!(r.get_bool().unwrap());
        Ok(r.get_opaque(64).unwrap().to_vec())
    }
}
