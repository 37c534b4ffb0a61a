//! NLM and NSM over real sockets against a real 2-brick volume: LOCK, TEST,
//! UNLOCK, blocking locks woken by a GRANTED callback to a client lockd
//! (a small NLM program behind its own portmapper), CANCEL, conflicts with
//! a second volume client (as a FUSE mount's locks are), SHARE, FREE_ALL,
//! SM_NOTIFY, the grace period after a restart with monitored clients, and
//! RPC-level bad input.

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
use kiln_portmap::rpc::{ReplyStat, RpcClient};
use kiln_portmap::{
    CallContext, ProcError, RpcProgram, RpcServer, ServerConfig, XdrReader, XdrWriter,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

struct Env {
    _dir: tempfile::TempDir,
    _bricks: Vec<tokio::task::JoinHandle<()>>,
    spec: VolumeSpec,
    volume: Arc<Volume>,
    vol_id: [u8; 16],
}

async fn volume() -> Env {
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
    async fn file(&self, name: &str) -> (Vec<u8>, Gfid) {
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
struct FakeLockd {
    granted: mpsc::UnboundedSender<TestArgs>,
    /// Every other call (the `_RES` replies of `_MSG` calls).
    others: mpsc::UnboundedSender<(u32, NlmCall)>,
    answer: Nlm4Stat,
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
struct FakeClient {
    pm: Portmapper,
    _lockd: ServeHandle,
    granted: mpsc::UnboundedReceiver<TestArgs>,
    others: mpsc::UnboundedReceiver<(u32, NlmCall)>,
}

async fn fake_client(answer: Nlm4Stat) -> FakeClient {
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

async fn nlm(env: &Env, client_pm: u16, state_dir: Option<&Path>, grace: Duration) -> NlmServer {
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

fn lk(fh: &[u8], host: &str, svid: i32, offset: u64, len: u64) -> Nlm4Lock {
    Nlm4Lock {
        caller_name: host.as_bytes().to_vec(),
        fh: fh.to_vec(),
        oh: format!("{svid}@{host}").into_bytes(),
        svid,
        offset,
        len,
    }
}

struct Nlm {
    c: RpcClient,
}

impl Nlm {
    async fn connect(addr: SocketAddr) -> Nlm {
        Nlm {
            c: RpcClient::connect(addr).await.unwrap(),
        }
    }

    async fn raw(&mut self, proc_: u32, args: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.c.call(NLM_PROGRAM, NLM_V4, proc_, args).await
    }

    async fn lock(&mut self, l: Nlm4Lock, exclusive: bool, block: bool, reclaim: bool) -> Nlm4Stat {
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

    async fn test(&mut self, l: Nlm4Lock, exclusive: bool) -> TestRes {
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

    async fn unlock(&mut self, l: Nlm4Lock) -> Nlm4Stat {
        let mut w = XdrWriter::new();
        UnlockArgs {
            cookie: vec![],
            lock: l,
        }
        .encode(&mut w);
        let r = self.raw(proc4::UNLOCK, w.as_bytes()).await.unwrap();
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat
    }

    async fn cancel(&mut self, l: Nlm4Lock, exclusive: bool) -> Nlm4Stat {
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

    async fn share(
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

    async fn free_all(&mut self, host: &str) {
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
async fn other_client_lock(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_test_unlock_and_blocking_with_granted_callback() {
    let env = volume().await;
    let mut client = fake_client(Nlm4Stat::Granted).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, gfid) = env.file("f1").await;
    assert!(c.raw(proc4::NULL, &[]).await.unwrap().is_empty());

    // A takes [0, 100) exclusively; B's TEST sees it, B's non-blocking lock is denied.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 100), true, false, false)
            .await,
        Nlm4Stat::Granted
    );
    let t = c.test(lk(&fh, "hostB", 20, 50, 10), false).await;
    assert_eq!(t.stat, Nlm4Stat::Denied);
    let h = t.holder.unwrap();
    assert!(h.exclusive);
    assert_eq!((h.svid, h.offset, h.len), (10, 0, 100));
    assert_eq!(
        c.test(lk(&fh, "hostB", 20, 100, 10), true).await.stat,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, false, false).await,
        Nlm4Stat::Denied
    );
    // The same owner re-locking is fine; shared locks of two owners coexist elsewhere.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 100), true, false, false)
            .await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 21, 200, 10), false, false, false)
            .await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.lock(lk(&fh, "hostC", 1, 205, 10), false, false, false)
            .await,
        Nlm4Stat::Granted
    );

    // B blocks; a re-sent LOCK is BLOCKED again; A's unlock wakes it with GRANTED.
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(
        c.lock(lk(&fh, "hostB", 20, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert!(client.granted.try_recv().is_err());
    // hostB's shared lock at 200 is its own (other svid though: conflicts) - free it first.
    assert_eq!(
        c.unlock(lk(&fh, "hostB", 21, 0, 0)).await,
        Nlm4Stat::Granted
    );
    assert_eq!(c.unlock(lk(&fh, "hostC", 1, 0, 0)).await, Nlm4Stat::Granted);
    let released = Instant::now();
    // Released in two pieces; the gateway keeps track of what is left.
    assert_eq!(
        c.unlock(lk(&fh, "hostA", 10, 50, 50)).await,
        Nlm4Stat::Granted
    );
    assert_eq!(server.manager().counts(), (1, 1));
    assert_eq!(
        c.unlock(lk(&fh, "hostA", 10, 0, 50)).await,
        Nlm4Stat::Granted
    );
    let g = tokio::time::timeout(Duration::from_secs(5), client.granted.recv())
        .await
        .expect("a GRANTED callback within 5 s")
        .unwrap();
    let waited = released.elapsed();
    assert_eq!(g.lock.caller_name, b"hostB");
    assert_eq!(
        (g.lock.svid, g.lock.offset, g.lock.len, g.exclusive),
        (20, 0, 0, true)
    );
    assert_eq!(g.lock.fh, fh);
    eprintln!(
        "nlm figures: GRANTED callback {:.0} ms after the conflicting unlock",
        waited.as_secs_f64() * 1000.0
    );
    // B holds it now: A is denied, and a second volume client too.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 1), false, false, false)
            .await,
        Nlm4Stat::Denied
    );
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(
        other_client_lock(&other, gfid, LockType::Read, 10, 1).await,
        Err(FsError::WouldBlock)
    ));
    // CANCEL: A blocks, cancels; B's unlock then grants A nothing.
    assert_eq!(
        c.lock(lk(&fh, "hostA", 10, 0, 1), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(server.manager().counts().1, 1);
    assert_eq!(
        c.cancel(lk(&fh, "hostA", 10, 0, 1), true).await,
        Nlm4Stat::Granted
    );
    assert_eq!(server.manager().counts().1, 0);
    assert_eq!(
        c.unlock(lk(&fh, "hostB", 20, 0, 0)).await,
        Nlm4Stat::Granted
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        client.granted.try_recv().is_err(),
        "a cancelled lock was granted"
    );
    assert_eq!(
        c.test(lk(&fh, "hostD", 1, 0, 0), true).await.stat,
        Nlm4Stat::Granted
    );
    // hostA unlocked all it held ([0, 100) in two steps): nothing is left.
    // Everything released: the gateway closed its fd of the file.
    assert_eq!(server.manager().counts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_client_conflicts_free_all_and_shares() {
    let env = volume().await;
    let client = fake_client(Nlm4Stat::Granted).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, gfid) = env.file("f2").await;
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();

    // A lock of the other client (FUSE) denies NLM; its release lets NLM in.
    other_client_lock(&other, gfid, LockType::Write, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        c.lock(lk(&fh, "g", 1, 5, 1), true, false, false).await,
        Nlm4Stat::Denied
    );
    let t = c.test(lk(&fh, "g", 1, 5, 1), false).await;
    assert_eq!(t.stat, Nlm4Stat::Denied);
    assert_eq!(t.holder.unwrap().svid, 4242);
    other_client_lock(&other, gfid, LockType::Unlock, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        c.lock(lk(&fh, "g", 1, 5, 1), true, false, false).await,
        Nlm4Stat::Granted
    );
    // And an NLM lock makes the other client's F_SETLK fail with EAGAIN.
    assert!(matches!(
        other_client_lock(&other, gfid, LockType::Write, 0, 0).await,
        Err(FsError::WouldBlock)
    ));
    // FREE_ALL drops every lock of host g.
    assert_eq!(
        c.lock(lk(&fh, "g", 2, 50, 0), false, false, false).await,
        Nlm4Stat::Granted
    );
    c.free_all("g").await;
    other_client_lock(&other, gfid, LockType::Write, 0, 0)
        .await
        .unwrap();
    other_client_lock(&other, gfid, LockType::Unlock, 0, 0)
        .await
        .unwrap();

    // Shares: deny-write against write access conflicts; unshare lifts it.
    assert_eq!(
        c.share(&fh, "h1", "o1", 2, 1, false).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h2", "o2", 0, 2, false).await,
        Nlm4Stat::Denied
    );
    assert_eq!(
        c.share(&fh, "h2", "o2", 0, 1, false).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h1", "o1", 0, 0, true).await,
        Nlm4Stat::Granted
    );
    assert_eq!(
        c.share(&fh, "h3", "o3", 0, 3, false).await,
        Nlm4Stat::Granted
    );
    c.free_all("h2").await;
    c.free_all("h3").await;
    assert_eq!(server.manager().counts(), (0, 0));

    // Unknown volume or malformed handle: STALE_FH.
    let mut bad = fh.clone();
    bad[0] ^= 0xff;
    assert_eq!(
        c.lock(lk(&bad, "g", 1, 0, 0), true, false, false).await,
        Nlm4Stat::StaleFh
    );
    assert_eq!(
        c.lock(lk(&fh[..31], "g", 1, 0, 0), true, false, false)
            .await,
        Nlm4Stat::StaleFh
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_grace_notify_and_client_reboot() {
    let env = volume().await;
    let state = tempfile::tempdir().unwrap();
    let client = fake_client(Nlm4Stat::Granted).await;
    // A statd on the client host, to receive our SM_NOTIFY.
    let (tx, mut notified) = mpsc::unbounded_channel();
    let mut rpc = RpcServer::new(ServerConfig::default());
    rpc.register(Arc::new(FakeStatd { tx }));
    let statd = serve_tcp_udp(Arc::new(rpc), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    client
        .pm
        .register(&Mapping::tcp_udp(
            NSM_PROGRAM,
            NSM_V1,
            statd.local_addr().port(),
        ))
        .await
        .unwrap();
    let (fh, gfid) = env.file("f3").await;
    {
        let server = nlm(
            &env,
            client.pm.addr().port(),
            Some(state.path()),
            Duration::from_secs(3),
        )
        .await;
        let mut c = Nlm::connect(server.local_addr()).await;
        // No monitored client before: no grace.
        assert_eq!(
            c.lock(lk(&fh, "guest", 1, 0, 0), true, false, false).await,
            Nlm4Stat::Granted
        );
        assert_eq!(c.unlock(lk(&fh, "guest", 1, 0, 0)).await, Nlm4Stat::Granted);
    }
    let sm = std::fs::read_dir(state.path().join("sm")).unwrap().count();
    assert_eq!(sm, 1, "the client host is recorded");
    // Restart: SM_NOTIFY reaches the client's statd; only reclaims during grace.
    let mut server = nlm(
        &env,
        client.pm.addr().port(),
        Some(state.path()),
        Duration::from_secs(3),
    )
    .await;
    server.notify_clients();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), notified.recv())
        .await
        .expect("SM_NOTIFY after the restart")
        .unwrap();
    assert_eq!(n.mon_name, b"127.0.0.1");
    assert_eq!(n.state, 3);
    let mut c = Nlm::connect(server.local_addr()).await;
    assert_eq!(
        c.lock(lk(&fh, "guest", 1, 0, 0), true, false, false).await,
        Nlm4Stat::DeniedGracePeriod
    );
    assert_eq!(
        c.test(lk(&fh, "guest", 1, 0, 0), true).await.stat,
        Nlm4Stat::DeniedGracePeriod
    );
    assert_eq!(
        c.lock(lk(&fh, "guest", 1, 0, 0), true, false, true).await,
        Nlm4Stat::Granted
    );
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        c.lock(lk(&fh, "guest", 2, 0, 0), true, false, false).await,
        Nlm4Stat::Denied
    );

    // The client reboots: its statd's SM_NOTIFY to ours frees its locks.
    let mut w = XdrWriter::new();
    StatChge {
        mon_name: b"guest".to_vec(),
        state: 7,
    }
    .encode(&mut w);
    let mut nsm = RpcClient::connect(server.local_addr()).await.unwrap();
    nsm.call(NSM_PROGRAM, NSM_V1, nsmproc::NOTIFY, w.as_bytes())
        .await
        .unwrap();
    let other = Volume::new(env.spec.clone());
    other.wait_ready(Duration::from_secs(10)).await.unwrap();
    other_client_lock(&other, gfid, LockType::Write, 0, 0)
        .await
        .unwrap();
    // SM_STAT answers our state; SM_MON from a remote host is refused.
    let mut w = XdrWriter::new();
    w.put_string(b"x");
    let r = nsm
        .call(NSM_PROGRAM, NSM_V1, nsmproc::STAT, w.as_bytes())
        .await
        .unwrap();
    let mut rd = XdrReader::new(&r);
    assert_eq!((rd.get_u32().unwrap(), rd.get_i32().unwrap()), (0, 3));
}

struct FakeStatd {
    tx: mpsc::UnboundedSender<StatChge>,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_rpc() {
    let env = volume().await;
    let server = nlm(&env, 1, None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    // Garbage and truncated arguments: GARBAGE_ARGS, and the server lives on.
    for (p, args) in [
        (proc4::LOCK, vec![0u8; 3]),
        (proc4::TEST, vec![0xff; 64]),
        (proc4::UNLOCK, vec![0, 0, 4, 1]),
        (proc4::SHARE, vec![0; 40]),
        (proc4::FREE_ALL, vec![0, 0, 0, 1, b'a']),
    ] {
        match c.raw(p, &args).await {
            Err(ClientError::Rpc(ReplyStat::GarbageArgs)) => {}
            other => panic!("proc {p}: {other:?}"),
        }
    }
    match c.raw(16, &[]).await {
        Err(ClientError::Rpc(ReplyStat::ProcUnavail)) => {}
        other => panic!("{other:?}"),
    }
    // NLM v1 and v3: PROG_MISMATCH 4..4.
    for v in [1, 3] {
        match c.c.call(NLM_PROGRAM, v, proc4::NULL, &[]).await {
            Err(ClientError::Rpc(ReplyStat::ProgMismatch { low: 4, high: 4 })) => {}
            other => panic!("v{v}: {other:?}"),
        }
    }
    assert!(c.raw(proc4::NULL, &[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_msg_forms_udp_and_refused_callback() {
    let env = volume().await;
    let mut client = fake_client(Nlm4Stat::Denied).await;
    let server = nlm(&env, client.pm.addr().port(), None, Duration::ZERO).await;
    let mut c = Nlm::connect(server.local_addr()).await;
    let (fh, _) = env.file("f4").await;

    // LOCK_MSG: void reply now, LOCK_RES to the client's lockd after.
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: vec![0xab; 8],
        block: false,
        exclusive: true,
        lock: lk(&fh, "m", 1, 0, 10),
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::LOCK_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let (p, call) = tokio::time::timeout(Duration::from_secs(5), client.others.recv())
        .await
        .expect("LOCK_RES")
        .unwrap();
    assert_eq!(p, proc4::LOCK_RES);
    assert_eq!(
        call,
        NlmCall::Res(Res {
            cookie: vec![0xab; 8],
            stat: Nlm4Stat::Granted
        })
    );
    // TEST_MSG from another host: TEST_RES says DENIED with the holder.
    let mut w = XdrWriter::new();
    TestArgs {
        cookie: vec![1],
        exclusive: false,
        lock: lk(&fh, "n", 2, 5, 1),
    }
    .encode(&mut w);
    assert!(c
        .raw(proc4::TEST_MSG, w.as_bytes())
        .await
        .unwrap()
        .is_empty());
    let (p, call) = tokio::time::timeout(Duration::from_secs(5), client.others.recv())
        .await
        .expect("TEST_RES")
        .unwrap();
    assert_eq!(p, proc4::TEST_RES);
    match call {
        NlmCall::TestRes(t) => {
            assert_eq!(t.stat, Nlm4Stat::Denied);
            assert_eq!(
                t.holder.map(|h| (h.svid, h.offset, h.len)),
                Some((1, 0, 10))
            );
        }
        other => panic!("{other:?}"),
    }

    // Over UDP too: a non-blocking LOCK of host n is DENIED.
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: vec![7],
        block: false,
        exclusive: true,
        lock: lk(&fh, "n", 2, 0, 0),
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    let r = kiln_portmap::rpc::client::udp_call(
        server.local_addr(),
        NLM_PROGRAM,
        NLM_V4,
        proc4::LOCK,
        None,
        w.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        Res::decode(&mut XdrReader::new(&r)).unwrap().stat,
        Nlm4Stat::Denied
    );

    // A blocked lock whose GRANTED the client refuses (it gave up) is
    // released again by the gateway.
    assert_eq!(
        c.lock(lk(&fh, "n", 2, 0, 0), true, true, false).await,
        Nlm4Stat::Blocked
    );
    assert_eq!(c.unlock(lk(&fh, "m", 1, 0, 0)).await, Nlm4Stat::Granted);
    let g = tokio::time::timeout(Duration::from_secs(5), client.granted.recv())
        .await
        .expect("GRANTED")
        .unwrap();
    assert_eq!(g.lock.caller_name, b"n");
    let t = Instant::now();
    loop {
        if c.test(lk(&fh, "o", 3, 0, 0), true).await.stat == Nlm4Stat::Granted {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the refused grant was kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused lock is forgotten too: no file state is left.
    assert_eq!(server.manager().counts(), (0, 0));
    assert_eq!(
        server
            .manager()
            .stats
            .callbacks_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
