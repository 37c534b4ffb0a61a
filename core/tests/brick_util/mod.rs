//! Shared by the brick_* tests: a real brick server on a loopback port over
//! a temp brick directory, and a raw `FrameCodec` client that speaks the
//! wire protocol directly (no client library in between).
#![allow(dead_code)]

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kiln_core::brick::{prepare_brick_dir, serve_listener, BrickConfig, BrickError};
use kiln_core::iatt::Iatt;
use kiln_core::proto::frame::{decode_meta, encode_meta};
use kiln_core::proto::{
    Frame, FrameCodec, FrameKind, Loc, NewInode, Reply, ReplyResult, Request, XattrMap,
    PROTOCOL_VERSION,
};
use kiln_core::{FsError, Gfid, Name};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// A brick server running in this process.
pub struct TestBrick {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub addr: SocketAddr,
    pub volume_id: String,
    pub label: String,
    pub task: tokio::task::JoinHandle<Result<(), BrickError>>,
}

pub const VOLUME: &str = "testvol";

impl TestBrick {
    /// Prepares a brick dir in a fresh temp dir and serves it.
    pub async fn start() -> TestBrick {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brick");
        let volume_id = uuid::Uuid::new_v4().to_string();
        prepare_brick_dir(&path, &volume_id, true).unwrap();
        let (addr, label, task) = serve_on(&path, &volume_id).await;
        TestBrick {
            dir,
            path,
            addr,
            volume_id,
            label,
            task,
        }
    }

    /// Serves the same brick dir again (a restarted brick: cold caches).
    pub async fn restart(&mut self) {
        self.task.abort();
        let (addr, label, task) = serve_on(&self.path, &self.volume_id).await;
        self.addr = addr;
        self.label = label;
        self.task = task;
        // Serving (start-up checks done) once a handshake is answered.
        self.client("restart-probe").await;
    }

    /// A connected client that completed its handshake.
    pub async fn client(&self, client_id: &str) -> Client {
        let mut c = Client::raw(self.addr).await;
        let (r, _) = c
            .call(
                Request::Handshake {
                    version: PROTOCOL_VERSION,
                    volume: VOLUME.into(),
                    brick: self.label.clone(),
                    client_id: client_id.into(),
                },
                Bytes::new(),
            )
            .await;
        match r {
            Ok(Reply::Welcome { volume_id }) => assert_eq!(volume_id, self.volume_id),
            other => panic!("handshake failed: {other:?}"),
        }
        c
    }

    /// Path of `rel` inside the brick.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Path of `gfid`'s handle.
    pub fn handle(&self, gfid: Gfid) -> PathBuf {
        self.path.join(".kiln").join(gfid.handle_rel_path())
    }
}

pub async fn serve_on(
    path: &Path,
    volume_id: &str,
) -> (
    SocketAddr,
    String,
    tokio::task::JoinHandle<Result<(), BrickError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let label = format!("127.0.0.1:{}", path.display());
    let cfg = BrickConfig {
        volume: VOLUME.into(),
        volume_id: volume_id.into(),
        label: label.clone(),
        path: path.to_path_buf(),
        listen: addr,
    };
    let task = tokio::spawn(serve_listener(cfg, listener));
    (addr, label, task)
}

/// A raw protocol client.
pub struct Client {
    pub framed: Framed<TcpStream, FrameCodec>,
    next: u64,
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A `Name` that bypasses validation, as a hostile client could send it.
pub fn raw_name(b: &[u8]) -> Name {
    let enc = encode_meta(&serde_bytes::ByteBuf::from(b.to_vec())).unwrap();
    decode_meta::<Name>(&enc).unwrap()
}

pub fn loc(parent: Gfid, n: &str) -> Loc {
    Loc {
        parent,
        name: name(n),
    }
}

pub fn new_inode(mode: u32) -> NewInode {
    NewInode {
        gfid: Gfid::new_random(),
        mode,
        uid: 0,
        gid: 0,
        xattrs: XattrMap::new(),
    }
}

impl Client {
    /// Connects without a handshake.
    pub async fn raw(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        Client {
            framed: Framed::new(s, FrameCodec),
            next: 1,
        }
    }

    /// Sends a request; returns its xid.
    pub async fn send(&mut self, req: Request, data: Bytes) -> u64 {
        let xid = self.next;
        self.next += 1;
        self.framed
            .send(Frame::request(xid, &req, data).unwrap())
            .await
            .unwrap();
        xid
    }

    /// The next reply, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<(u64, ReplyResult, Bytes)> {
        let f = tokio::time::timeout(Duration::from_secs(20), self.framed.next())
            .await
            .expect("reply within 20 s")?;
        let f = f.ok()?;
        assert_eq!(f.kind, FrameKind::Reply);
        let r = f.decode_reply().unwrap();
        Some((f.xid, r, f.data))
    }

    /// Sends and waits for that request's reply (no other in flight).
    pub async fn call(&mut self, req: Request, data: Bytes) -> (ReplyResult, Bytes) {
        let xid = self.send(req, data).await;
        let (rx, r, d) = self.recv().await.expect("connection open");
        assert_eq!(rx, xid);
        (r, d)
    }

    pub async fn ok(&mut self, req: Request) -> Reply {
        let op = req.op_name();
        match self.call(req, Bytes::new()).await.0 {
            Ok(r) => r,
            Err(e) => panic!("{op} failed: {e:?}"),
        }
    }

    pub async fn err(&mut self, req: Request) -> FsError {
        let op = req.op_name();
        match self.call(req, Bytes::new()).await.0 {
            Ok(r) => panic!("{op} should fail, got {r:?}"),
            Err(e) => e,
        }
    }

    pub async fn mkdir(&mut self, parent: Gfid, n: &str) -> Iatt {
        match self
            .ok(Request::Mkdir {
                loc: loc(parent, n),
                inode: new_inode(0o755),
            })
            .await
        {
            Reply::Entry { iatt, .. } => iatt,
            r => panic!("{r:?}"),
        }
    }

    pub async fn create(&mut self, parent: Gfid, n: &str) -> (Iatt, u64) {
        match self
            .ok(Request::Create {
                loc: loc(parent, n),
                inode: new_inode(0o644),
                flags: libc::O_RDWR,
                exclusive: true,
            })
            .await
        {
            Reply::Created { iatt, fd } => (iatt, fd),
            r => panic!("{r:?}"),
        }
    }

    pub async fn write(&mut self, fd: u64, offset: u64, data: &[u8]) -> (u32, Iatt) {
        match self
            .call(Request::Write { fd, offset }, Bytes::copy_from_slice(data))
            .await
            .0
        {
            Ok(Reply::Written { count, iatt }) => (count, iatt),
            r => panic!("{r:?}"),
        }
    }

    pub async fn read(&mut self, fd: u64, offset: u64, size: u32) -> (Bytes, bool) {
        match self
            .call(Request::Read { fd, offset, size }, Bytes::new())
            .await
        {
            (Ok(Reply::Read { eof }), d) => (d, eof),
            r => panic!("{r:?}"),
        }
    }

    pub async fn lookup(&mut self, parent: Gfid, n: &str) -> Result<Iatt, FsError> {
        match self
            .call(
                Request::Lookup {
                    loc: loc(parent, n),
                    xattrs: vec![],
                },
                Bytes::new(),
            )
            .await
            .0
        {
            Ok(Reply::Entry { iatt, .. }) => Ok(iatt),
            Ok(r) => panic!("{r:?}"),
            Err(e) => Err(e),
        }
    }

    pub async fn opendir(&mut self, gfid: Gfid) -> u64 {
        match self.ok(Request::Opendir { gfid }).await {
            Reply::Opened { fd } => fd,
            r => panic!("{r:?}"),
        }
    }
}

/// Everything under `dir`, relative, sorted (to check nothing leaked out).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}
