//! Test harness: a real 2-brick volume in process, a client host's lockd
//! and statd (small programs behind their own portmapper) that record the
//! gateway's callbacks, an NLM client over the shared RPC client, and a
//! second volume client taking locks as a FUSE mount does.

#![allow(dead_code)]

use async_trait::async_trait;
use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig};
use kiln_core::client::{Caller, Volume};
use kiln_core::graph::{BrickSpec, VolumeKind, VolumeSpec};
use kiln_core::proto::{FileLock, LockCmd, LockType};
use kiln_core::{FsError, Gfid, Name};
use kiln_nfs3::FileHandle;
use kiln_nlm::types::*;
use kiln_nlm::{serve_nlm, NlmConfig, NlmServer};
use kiln_portmap::pmap::{Mapping, Portmapper};
use kiln_portmap::rpc::client::ClientError;
use kiln_portmap::rpc::server::{serve_tcp_udp, ServeHandle};
use kiln_portmap::rpc::RpcClient;
use kiln_portmap::{
    CallContext, ProcError, RpcProgram, RpcServer, ServerConfig, XdrReader, XdrWriter,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub _bricks: Vec<tokio::task::JoinHandle<()>>,
    pub spec: VolumeSpec,
    pub volume: Arc<Volume>,
    pub vol_id: [u8; 16],
}

pub async fn volume() -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let mut specs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..2 {
        let path = dir.path().join(format!("brick{i}"));
        prepare_brick_dir(&path, &id.to_string(), true).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = BrickConfig {
            volume: "lv".into(),
            volume_id: id.to_string(),
            label: format!("127.0.0.1:{}", path.display()),
            path: path.clone(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        tasks.push(tokio::spawn(async move {
            let _ = serve_listener(cfg, listener).await;
        }));
        specs.push(BrickSpec {
            subvol: format!("lv-client-{i}"),
            host: "127.0.0.1".into(),
            path: path.display().to_string(),
            port,
        });
    }
    let mut opts = BTreeMap::new();
    opts.insert("network.ping-timeout".to_string(), "5".to_string());
    let spec = VolumeSpec {
        name: "lv".into(),
        id: id.to_string(),
        kind: VolumeKind::Distribute,
        bricks: specs,
        options: opts,
        generation: 1,
    };
    let volume = Arc::new(Volume::new(spec.clone()));
    volume.wait_ready(Duration::from_secs(10)).await.unwrap();
    Env {
        _dir: dir,
        _bricks: tasks,
        spec,
        volume,
        vol_id: *id.as_bytes(),
    }
}

impl Env {
    /// Creates a file; returns its NFS handle and gfid.
    pub async fn file(&self, name: &str) -> (Vec<u8>, Gfid) {
        let (iatt, fd) = self
            .volume
            .create(
                Gfid::ROOT,
                &Name::new(name).unwrap(),
                &Caller::ROOT,
                0o644,
                libc::O_RDWR,
                true,
            )
            .await
            .unwrap();
        self.volume.release(&fd).await.unwrap();
        (
            FileHandle::new(self.vol_id, iatt.gfid).encode().to_vec(),
            iatt.gfid,
        )
    }
}

/// A client host's lockd: answers GRANTED and records it.
pub struct FakeLockd {
    pub granted: mpsc::UnboundedSender<TestArgs>,
    /// Every other call (the `_RES` replies of `_MSG` calls).
    pub others: mpsc::UnboundedSender<(u32, NlmCall)>,
    pub answer: Nlm4Stat,
}

#[async_trait]
impl RpcProgram for FakeLockd {
    fn program(&self) -> u32 {
        NLM_PROGRAM
    }
    fn versions(&self) -> &[u32] {
        &[NLM_V4]
    }
    fn name(&self) -> &'static str {
        "fake-lockd"
    }
    async fn call(
        &self,
        _ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let mut w = XdrWriter::new();
        match decode_nlm(proc_, args) {
            Some(Ok(NlmCall::Test(a))) if proc_ == proc4::GRANTED => {
                Res {
                    cookie: a.cookie.clone(),
                    stat: self.answer,
                }
                .encode(&mut w);
                let _ = self.granted.send(a);
            }
            Some(Ok(c)) => {
                let _ = self.others.send((proc_, c));
            }
            _ => return Err(ProcError::GarbageArgs),
        }
        Ok(w.into_bytes())
    }
}

/// The client host: a portmapper with a lockd registered.
pub struct FakeClient {
    pub pm: Portmapper,
    pub _lockd: ServeHandle,
    pub granted: mpsc::UnboundedReceiver<TestArgs>,
    pub others: mpsc::UnboundedReceiver<(u32, NlmCall)>,
}

pub async fn fake_client(answer: Nlm4Stat) -> FakeClient {
    let pm = Portmapper::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (otx, orx) = mpsc::unbounded_channel();
    let mut rpc = RpcServer::new(ServerConfig::default());
    rpc.register(Arc::new(FakeLockd {
        granted: tx,
        others: otx,
        answer,
    }));
    let lockd = serve_tcp_udp(Arc::new(rpc), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    pm.register(&Mapping::tcp_udp(
        NLM_PROGRAM,
        NLM_V4,
        lockd.local_addr().port(),
    ))
    .await
    .unwrap();
    FakeClient {
        pm,
        _lockd: lockd,
        granted: rx,
        others: orx,
    }
}

pub async fn nlm(
    env: &Env,
    client_pm: u16,
    state_dir: Option<&Path>,
    grace: Duration,
) -> NlmServer {
    serve_nlm(
        vec![env.volume.clone()],
        NlmConfig {
            listen: "127.0.0.1".parse().unwrap(),
            port: 0,
            state_dir: state_dir.map(Path::to_path_buf),
            grace,
            client_portmap_port: client_pm,
        },
    )
    .await
    .unwrap()
}

pub fn lk(fh: &[u8], host: &str, svid: i32, offset: u64, len: u64) -> Nlm4Lock {
    Nlm4Lock {
        caller_name: host.as_bytes().to_vec(),
        fh: fh.to_vec(),
        oh: format!("{svid}@{host}").into_bytes(),
        svid,
        offset,
        len,
    }
}

pub struct Nlm {
    pub c: RpcClient,
}

impl Nlm {
    pub async fn connect(addr: SocketAddr) -> Nlm {
        Nlm {
            c: RpcClient::connect(addr).await.unwrap(),
        }
    }

    pub async fn raw(&mut self, proc_: u32, args: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.c.call(NLM_PROGRAM, NLM_V4, proc_, args).await
    }

    pub async fn lock(
        &mut self,
        l: Nlm4Lock,
        exclusive: bool,
        block: bool,
        reclaim: bool,
    ) -> Nlm4Stat {
        let mut w = XdrWriter::new();
        LockArgs {
            cookie: vec![1, 2, 3, 4],
            block,
            exclusive,
            lock: l,
            reclaim,
            state: 1,
        }
        .encode(&mut w);
        let r = self.raw(proc4::LOCK, w.as_bytes()).await.unwrap();
        let res = Res::decode(&mut XdrReader::new(&r)).unwrap();
        assert_eq!(res.cookie, [1, 2, 3, 4]);
        res.stat
    }

    pub async fn test(&mut self, l: Nlm4Lock, exclusive: bool) -> TestRes {
        let mut w = XdrWriter::new();
        TestArgs {
            cookie: vec![9],
            exclusive,
            lock: l,
        }
        .encode(&mut w);
        let r = self.raw(proc4::TEST, w.as_bytes()).await.unwrap();
        TestRes::decode(&mut XdrReader::new(&r)).unwrap()
    }

    pub async fn unlock(&mut self, l: Nlm4Lock) -> Nlm4Stat {
        let mut w = XdrWriter::new();
        UnlockArgs {
            cookie: vec![],
            lock: l,
        }
        .encode(&mut w);
        let r = self.raw(proc4::UNLOCK, w.as_bytes()).await.unwrap();
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat
    }

    pub async fn cancel(&mut self, l: Nlm4Lock, exclusive: bool) -> Nlm4Stat {
        let mut w = XdrWriter::new();
        CancArgs {
            cookie: vec![],
            block: true,
            exclusive,
            lock: l,
        }
        .encode(&mut w);
        let r = self.raw(proc4::CANCEL, w.as_bytes()).await.unwrap();
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat
    }

    pub async fn share(
        &mut self,
        fh: &[u8],
        host: &str,
        oh: &str,
        mode: u32,
        access: u32,
        unshare: bool,
    ) -> Nlm4Stat {
        let mut w = XdrWriter::new();
        ShareArgs {
            cookie: vec![5],
            share: Nlm4Share {
                caller_name: host.as_bytes().to_vec(),
                fh: fh.to_vec(),
                oh: oh.as_bytes().to_vec(),
                mode,
                access,
            },
            reclaim: false,
        }
        .encode(&mut w);
        let p = if unshare {
            proc4::UNSHARE
        } else {
            proc4::SHARE
        };
        let r = self.raw(p, w.as_bytes()).await.unwrap();
        ShareRes::decode(&mut XdrReader::new(&r)).unwrap().stat
    }

    pub async fn free_all(&mut self, host: &str) {
        let mut w = XdrWriter::new();
        Notify {
            name: host.as_bytes().to_vec(),
            state: 3,
        }
        .encode(&mut w);
        assert!(self
            .raw(proc4::FREE_ALL, w.as_bytes())
            .await
            .unwrap()
            .is_empty());
    }
}

/// A lock through a second volume client (what a FUSE mount's fcntl does).
pub async fn other_client_lock(
    v: &Volume,
    gfid: Gfid,
    kind: LockType,
    start: u64,
    len: u64,
) -> Result<(), FsError> {
    let fd = v.open(gfid, libc::O_RDWR).await?;
    let r = v
        .lk(
            &fd,
            LockCmd::Set,
            FileLock {
                kind,
                start,
                len,
                owner: 77,
                pid: 4242,
            },
        )
        .await
        .map(|_| ());
    // The fd goes; the lock (like a FUSE lock under an open file) stays
    // until unlocked by the same owner.
    let _ = v.release(&fd).await;
    r
}

pub struct FakeStatd {
    pub tx: mpsc::UnboundedSender<StatChge>,
}

#[async_trait]
impl RpcProgram for FakeStatd {
    fn program(&self) -> u32 {
        NSM_PROGRAM
    }
    fn versions(&self) -> &[u32] {
        &[NSM_V1]
    }
    fn name(&self) -> &'static str {
        "fake-statd"
    }
    async fn call(
        &self,
        _: &CallContext,
        _: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        if let Some(Ok(NsmCall::Notify(n))) = decode_nsm(proc_, args) {
            let _ = self.tx.send(n);
        }
        Ok(Vec::new())
    }
}
