//! NFS failover across servers' gateways: a replica 2 volume over node01 (A)
//! and node02 (B). A client gets a file handle from A's MOUNT + LOOKUP and
//! writes through A; A is killed (-9, whole server); the same handles then
//! work on B's gateway (GETATTR, READ, WRITE, COMMIT; same data, never
//! NFS3ERR_STALE). Then B's `kiln nfs` process is killed and brought back
//! by `volume start VOL force`: the handles still work, and the write
//! verifier (WRITE and COMMIT) has changed, as RFC 1813 asks of a restarted
//! server. The client speaks MOUNT/NFS exactly as on the wire with
//! kiln-portmap's RPC client, from the client host's network namespace.

use kiln_portmap::rpc::{ClientError, RpcClient};
use kiln_portmap::{XdrReader, XdrWriter};
use kiln_tests::{check_prerequisites, cmdline, wait_for, wait_until, Cluster, Node};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VOL: &str = "vfo";
const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const NFS_PORT: u16 = 2049;
const MOUNT_PORT: u16 = 38465;
const NFS3ERR_STALE: u32 = 70;
const NFS3ERR_JUKEBOX: u32 = 10008;
const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;
/// Size of the file written through A (not a multiple of any I/O size).
const FILE_LEN: usize = 3 * 1024 * 1024 + 4099;
/// Bytes per WRITE / READ call.
const CHUNK: usize = 256 * 1024;

/// Why an NFS call gave no result.
#[derive(Debug)]
enum CallErr {
    /// The server answered with this nfsstat3 / mountstat3.
    Status(u32),
    /// No NFS-level answer (connection, RPC or decoding error).
    Transport(String),
}

impl std::fmt::Display for CallErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallErr::Status(s) => write!(f, "status {s}"),
            CallErr::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl From<ClientError> for CallErr {
    fn from(e: ClientError) -> Self {
        CallErr::Transport(e.to_string())
    }
}

impl From<kiln_portmap::XdrError> for CallErr {
    fn from(e: kiln_portmap::XdrError) -> Self {
        CallErr::Transport(format!("reply does not decode: {e}"))
    }
}

type CallResult<T> = Result<T, CallErr>;

/// Raw MOUNT v3 + NFSv3 calls against one server, AUTH_SYS root.
struct Nfs {
    mount: RpcClient,
    nfs: RpcClient,
}

impl Nfs {
    async fn connect(ip: std::net::Ipv4Addr) -> CallResult<Nfs> {
        let connect = |port| async move {
            let mut c = RpcClient::connect(SocketAddr::from((ip, port)))
                .await
                .map_err(|e| CallErr::Transport(format!("connect {ip}:{port}: {e}")))?;
            c.set_auth_sys(0, 0, vec![0]);
            Ok::<_, CallErr>(c)
        };
        Ok(Nfs {
            mount: connect(MOUNT_PORT).await?,
            nfs: connect(NFS_PORT).await?,
        })
    }

    /// MNT v3 of `path`: the export's root handle.
    async fn mnt(&mut self, path: &str) -> CallResult<Vec<u8>> {
        let mut w = XdrWriter::new();
        w.put_string(path.as_bytes());
        let r = self.mount.call(MOUNT, 3, 1, w.as_bytes()).await?;
        let mut x = XdrReader::new(&r);
        match x.get_u32()? {
            0 => Ok(x.get_opaque(64)?.to_vec()),
            s => Err(CallErr::Status(s)),
        }
    }

    /// Calls NFS procedure `proc_`; on NFS3_OK returns the rest of the result.
    async fn call(&mut self, proc_: u32, args: &XdrWriter) -> CallResult<Vec<u8>> {
        let r = self.nfs.call(NFS, 3, proc_, args.as_bytes()).await?;
        let mut x = XdrReader::new(&r);
        match x.get_u32()? {
            0 => Ok(x.rest().to_vec()),
            s => Err(CallErr::Status(s)),
        }
    }

    /// GETATTR: (type, size, fileid).
    async fn getattr(&mut self, fh: &[u8]) -> CallResult<(u32, u64, u64)> {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        let rest = self.call(1, &w).await?;
        let f = XdrReader::new(&rest).get_fixed(84)?.to_vec();
        Ok(fattr_fields(&f))
    }

    /// LOOKUP of `name` in `dir`: its handle.
    async fn lookup(&mut self, dir: &[u8], name: &str) -> CallResult<Vec<u8>> {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_string(name.as_bytes());
        let rest = self.call(3, &w).await?;
        Ok(XdrReader::new(&rest).get_opaque(64)?.to_vec())
    }

    /// CREATE (UNCHECKED, mode 0644) of `name` in `dir`: its handle.
    async fn create(&mut self, dir: &[u8], name: &str) -> CallResult<Vec<u8>> {
        let mut w = XdrWriter::new();
        w.put_opaque(dir);
        w.put_string(name.as_bytes());
        w.put_u32(0); // UNCHECKED
        w.put_bool(true);
        w.put_u32(0o644);
        for _ in 0..3 {
            w.put_bool(false); // uid, gid, size
        }
        w.put_u32(0); // atime: DONT_CHANGE
        w.put_u32(0); // mtime: DONT_CHANGE
        let rest = self.call(8, &w).await?;
        let mut r = XdrReader::new(&rest);
        if !r.get_bool()? {
            return Err(CallErr::Transport("CREATE returned no handle".into()));
        }
        Ok(r.get_opaque(64)?.to_vec())
    }

    /// WRITE: (count, committed, verifier).
    async fn write(
        &mut self,
        fh: &[u8],
        off: u64,
        data: &[u8],
        stable: u32,
    ) -> CallResult<(u32, u32, [u8; 8])> {
        let mut w = XdrWriter::with_capacity(data.len() + 64);
        w.put_opaque(fh);
        w.put_u64(off);
        w.put_u32(data.len() as u32);
        w.put_u32(stable);
        w.put_opaque(data);
        let rest = self.call(7, &w).await?;
        let mut r = XdrReader::new(&rest);
        skip_wcc(&mut r)?;
        Ok((r.get_u32()?, r.get_u32()?, r.get_array::<8>()?))
    }

    /// COMMIT of the whole file: the verifier.
    async fn commit(&mut self, fh: &[u8]) -> CallResult<[u8; 8]> {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        w.put_u64(0);
        w.put_u32(0);
        let rest = self.call(21, &w).await?;
        let mut r = XdrReader::new(&rest);
        skip_wcc(&mut r)?;
        Ok(r.get_array::<8>()?)
    }

    /// READ of `count` bytes at `off`: (data, eof).
    async fn read(&mut self, fh: &[u8], off: u64, count: u32) -> CallResult<(Vec<u8>, bool)> {
        let mut w = XdrWriter::new();
        w.put_opaque(fh);
        w.put_u64(off);
        w.put_u32(count);
        let rest = self.call(6, &w).await?;
        let mut r = XdrReader::new(&rest);
        if r.get_bool()? {
            r.get_fixed(84)?;
        }
        let n = r.get_u32()?;
        let eof = r.get_bool()?;
        let data = r.get_opaque(count as usize)?.to_vec();
        if data.len() != n as usize {
            return Err(CallErr::Transport(format!(
                "READ count {n} but {} bytes",
                data.len()
            )));
        }
        Ok((data, eof))
    }

    /// Reads the whole file in `CHUNK` calls.
    async fn read_all(&mut self, fh: &[u8]) -> CallResult<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let (data, eof) = self.read(fh, out.len() as u64, CHUNK as u32).await?;
            let empty = data.is_empty();
            out.extend_from_slice(&data);
            if eof || empty {
                return Ok(out);
            }
        }
    }

    /// Writes `data` at 0 in `CHUNK` calls with `stable`; returns the
    /// verifier of the last reply (all must agree).
    async fn write_all(&mut self, fh: &[u8], data: &[u8], stable: u32) -> CallResult<[u8; 8]> {
        let mut verf = None;
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let (n, committed, v) = self.write(fh, (i * CHUNK) as u64, chunk, stable).await?;
            assert_eq!(n as usize, chunk.len(), "short WRITE");
            assert!(
                committed >= stable,
                "WRITE committed {committed} < asked {stable}"
            );
            if let Some(prev) = verf {
                assert_eq!(prev, v, "the write verifier changed between WRITEs");
            }
            verf = Some(v);
        }
        verf.ok_or_else(|| CallErr::Transport("nothing written".into()))
    }
}

/// (type, size, fileid) out of a fattr3.
fn fattr_fields(f: &[u8]) -> (u32, u64, u64) {
    let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    (be32(0), be64(20), be64(52))
}

fn skip_wcc(r: &mut XdrReader<'_>) -> Result<(), kiln_portmap::XdrError> {
    if r.get_bool()? {
        r.get_fixed(24)?;
    }
    if r.get_bool()? {
        r.get_fixed(84)?;
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes that do not compress.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Runs `fut` to completion on a fresh current-thread runtime inside the
/// client host's network namespace (its sockets live there).
fn on_client<T: Send>(
    c: &Cluster,
    fut: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send,
) -> T {
    c.client()
        .ns()
        .enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(fut())
        })
        .expect("enter the client's namespace")
}

/// Pid of the node's `kiln nfs` gateway process.
fn gateway_pid(node: &Node) -> Option<i32> {
    node.pids().into_iter().find(|p| {
        let cl = cmdline(*p);
        cl.split_whitespace().take(3).any(|t| t == "nfs") && cl.contains("--listen")
    })
}

/// Waits until the node's gateway (other than `not`) accepts on the NFS and
/// MOUNT ports and its MNT of the volume succeeds; returns its pid.
fn wait_gateway(c: &Cluster, node: &Node, not: Option<i32>) -> i32 {
    let ip = node.addr();
    wait_for(
        &format!("{}'s NFS gateway to serve /{VOL}", node.name()),
        Duration::from_secs(90),
        || {
            let Some(pid) = gateway_pid(node).filter(|p| Some(*p) != not) else {
                return Ok(None);
            };
            let up = node
                .listeners()
                .iter()
                .filter(|l| l.pid == pid)
                .filter(|l| l.port == NFS_PORT || l.port == MOUNT_PORT)
                .count()
                >= 2;
            if !up {
                return Ok(None);
            }
            let mounted = on_client(c, || {
                Box::pin(async move { Nfs::connect(ip).await?.mnt(&format!("/{VOL}")).await })
            });
            Ok(mounted.is_ok().then_some(pid))
        },
    )
    .unwrap()
}

fn create_replica2(c: &Cluster) -> Vec<PathBuf> {
    let mut args: Vec<String> = ["volume", "create", VOL, "replica", "2"]
        .map(String::from)
        .to_vec();
    let mut dirs = Vec::new();
    for i in [1, 2] {
        let brick = format!("{VOL}.b{}", i - 1);
        args.push(c.node(i).brick_spec(&brick));
        dirs.push(c.node(i).brick_dir(&brick));
    }
    args.push("force".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.node(1).kiln_ok(&refs).unwrap();
    c.node(1).kiln_ok(&["volume", "start", VOL]).unwrap();
    for (i, dir) in [1, 2].iter().zip(&dirs) {
        let n = c.node(*i);
        wait_until(
            &format!("brick {} to listen", n.brick_spec_of(dir)),
            Duration::from_secs(60),
            || n.brick_port(dir).is_some(),
        )
        .unwrap();
    }
    dirs
}

/// Handles and data the client carries from one gateway to the next.
#[derive(Clone)]
struct Carried {
    root: Vec<u8>,
    dir: Vec<u8>,
    file: Vec<u8>,
    fileid: u64,
    data: Vec<u8>,
}

fn assert_not_stale<T>(what: &str, r: &CallResult<T>) {
    if let Err(CallErr::Status(NFS3ERR_STALE)) = r {
        panic!("{what}: NFS3ERR_STALE with a handle from another gateway");
    }
}

/// Uses every carried handle on the gateway at `ip`: GETATTR (same fileid
/// and size), LOOKUP through the root and directory handles (same file
/// handle), READ (same bytes); then an UNSTABLE WRITE of a new block, its
/// COMMIT (same verifier as the WRITE), and reads it back. Returns the
/// write verifier and the file's new contents. The first GETATTR is retried
/// while the gateway still reports a transient error (JUKEBOX, or a brick
/// it is still finding down), never past 60 s, and never on STALE.
async fn reuse(ip: std::net::Ipv4Addr, h: &Carried, seed: u64) -> ([u8; 8], Vec<u8>, Duration) {
    let mut nfs = Nfs::connect(ip).await.expect("connect to the gateway");
    let t0 = Instant::now();
    let attr = loop {
        let r = nfs.getattr(&h.file).await;
        assert_not_stale("GETATTR", &r);
        match r {
            Ok(a) => break a,
            Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                if matches!(e, CallErr::Status(s) if s != NFS3ERR_JUKEBOX && s != 5) {
                    panic!("GETATTR on {ip}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if matches!(e, CallErr::Transport(_)) {
                    nfs = Nfs::connect(ip).await.expect("reconnect");
                }
            }
            Err(e) => panic!("GETATTR on {ip} still failing after 60 s: {e}"),
        }
    };
    let first_ok = t0.elapsed();
    assert_eq!(attr.0, 1, "a regular file");
    assert_eq!(attr.1, h.data.len() as u64, "size");
    assert_eq!(attr.2, h.fileid, "fileid");
    for (what, r) in [
        ("GETATTR root", nfs.getattr(&h.root).await.map(|a| a.0)),
        ("GETATTR dir", nfs.getattr(&h.dir).await.map(|a| a.0)),
    ] {
        assert_not_stale(what, &r);
        assert_eq!(r.unwrap_or_else(|e| panic!("{what}: {e}")), 2, "{what}");
    }
    let r = nfs.lookup(&h.root, "d").await;
    assert_not_stale("LOOKUP d", &r);
    assert_eq!(r.expect("LOOKUP d"), h.dir, "the directory's handle");
    let r = nfs.lookup(&h.dir, "f.bin").await;
    assert_not_stale("LOOKUP f.bin", &r);
    assert_eq!(r.expect("LOOKUP f.bin"), h.file, "the file's handle");
    let r = nfs.read_all(&h.file).await;
    assert_not_stale("READ", &r);
    let got = r.expect("READ");
    assert_eq!(got.len(), h.data.len());
    assert!(got == h.data, "READ returned other bytes");

    // A new block in the middle, UNSTABLE, then COMMIT.
    let block = pattern(CHUNK + 777, seed);
    let off = 1_000_003;
    let r = nfs.write(&h.file, off as u64, &block, UNSTABLE).await;
    assert_not_stale("WRITE", &r);
    let (n, _committed, verf) = r.expect("WRITE");
    assert_eq!(n as usize, block.len());
    let r = nfs.commit(&h.file).await;
    assert_not_stale("COMMIT", &r);
    assert_eq!(
        r.expect("COMMIT"),
        verf,
        "COMMIT and WRITE verifiers differ"
    );
    let mut data = h.data.clone();
    data[off..off + block.len()].copy_from_slice(&block);
    let got = nfs.read_all(&h.file).await.expect("READ after WRITE");
    assert!(got == data, "READ after WRITE returned other bytes");
    (verf, data, first_ok)
}

#[test]
fn handles_survive_server_death_and_gateway_restart() {
    check_prerequisites().unwrap();
    let t_all = Instant::now();
    let c = Cluster::pool(2).unwrap();
    let (a, b) = (c.node(1), c.node(2));
    let bricks = create_replica2(&c);
    let pid_a = wait_gateway(&c, a, None);
    let pid_b = wait_gateway(&c, b, None);
    let t_up = t_all.elapsed();

    // Through A: MOUNT, make d/f.bin, write it (FILE_SYNC), look it up again.
    let data = pattern(FILE_LEN, 0x5eed);
    let (ip_a, ip_b) = (a.addr(), b.addr());
    let carried = {
        let data = data.clone();
        on_client(&c, move || {
            Box::pin(async move {
                let mut nfs = Nfs::connect(ip_a).await.expect("connect to A");
                let root = nfs.mnt(&format!("/{VOL}")).await.expect("MNT on A");
                let mut w = XdrWriter::new();
                w.put_opaque(&root);
                w.put_string(b"d");
                w.put_bool(true);
                w.put_u32(0o755);
                for _ in 0..3 {
                    w.put_bool(false);
                }
                w.put_u32(0);
                w.put_u32(0);
                nfs.call(9, &w).await.expect("MKDIR d on A");
                let dir = nfs.lookup(&root, "d").await.expect("LOOKUP d on A");
                let created = nfs.create(&dir, "f.bin").await.expect("CREATE on A");
                nfs.write_all(&created, &data, FILE_SYNC)
                    .await
                    .expect("WRITE on A");
                let file = nfs.lookup(&dir, "f.bin").await.expect("LOOKUP on A");
                assert_eq!(file, created, "CREATE and LOOKUP handles differ");
                let (_, size, fileid) = nfs.getattr(&file).await.expect("GETATTR on A");
                assert_eq!(size, FILE_LEN as u64);
                let back = nfs.read_all(&file).await.expect("READ on A");
                assert!(back == data, "A reads back other bytes");
                Carried {
                    root,
                    dir,
                    file,
                    fileid,
                    data,
                }
            })
        })
    };
    assert_eq!(carried.file.len(), 32, "fixed-size handles");
    // Both copies hold it (replica 2), so B can serve it without A.
    for brick in &bricks {
        let on_disk = std::fs::read(brick.join("d/f.bin")).unwrap();
        assert_eq!(
            sha256_hex(&on_disk),
            sha256_hex(&data),
            "{}",
            brick.display()
        );
    }

    // B's verifier before anything happens to it.
    let verf_b0 = {
        let h = carried.clone();
        on_client(&c, move || {
            Box::pin(async move {
                let mut nfs = Nfs::connect(ip_b).await.expect("connect to B");
                let (s, _, _) = nfs.getattr(&h.file).await.expect("GETATTR on B");
                assert_eq!(s, 1);
                nfs.commit(&h.file).await.expect("COMMIT on B")
            })
        })
    };

    // A dies: kill -9 of the whole server (daemon, bricks, gateway).
    a.kill().unwrap();
    assert!(gateway_pid(a).is_none() && !a.is_running());
    assert!(cmdline(pid_a).is_empty(), "A's gateway is gone");

    let (verf_b1, data1, first_b1) = {
        let h = carried.clone();
        on_client(&c, move || {
            Box::pin(async move { reuse(ip_b, &h, 0xb1).await })
        })
    };
    assert_eq!(verf_b1, verf_b0, "same gateway, same verifier");
    let written = sha256_hex(&data1);
    assert_eq!(
        sha256_hex(&std::fs::read(bricks[1].join("d/f.bin")).unwrap()),
        written,
        "B's brick holds what was written through B"
    );

    assert_eq!(gateway_pid(b), Some(pid_b), "B's gateway is the one it was");
    // B's gateway dies and is brought back by `volume start VOL force`.
    // SAFETY: kill(2) on a pid of ours, checked alive just above.
    assert_eq!(
        unsafe { libc::kill(pid_b, libc::SIGKILL) },
        0,
        "kill -9 B's gateway"
    );
    wait_until("B's gateway to exit", Duration::from_secs(10), || {
        gateway_pid(b) != Some(pid_b)
    })
    .unwrap();
    let t_restart = Instant::now();
    // The CLI may complain about A (down); what matters is the gateway.
    let out = b
        .kiln_timeout(&["volume", "start", VOL, "force"], Duration::from_secs(60))
        .unwrap();
    let pid_b2 = wait_gateway(&c, b, Some(pid_b));
    let restart_took = t_restart.elapsed();
    assert_ne!(pid_b2, pid_b);

    let carried2 = Carried {
        data: data1,
        ..carried.clone()
    };
    let (verf_b2, data2, first_b2) = {
        let h = carried2.clone();
        on_client(&c, move || {
            Box::pin(async move { reuse(ip_b, &h, 0xb2).await })
        })
    };
    assert_ne!(
        verf_b2, verf_b1,
        "the write verifier must change when the gateway restarts (RFC 1813 COMMIT)"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(bricks[1].join("d/f.bin")).unwrap()),
        sha256_hex(&data2)
    );
    eprintln!(
        "nfs_failover figures: pool + volume + gateways up {:.1}s; first GETATTR on B after A's kill {:.2}s; \
         B's gateway back after `volume start force` in {:.1}s (cli exit {}: {}); first GETATTR after it {:.2}s; \
         verifiers A-era B {} / after restart {}; total {:.1}s",
        t_up.as_secs_f64(),
        first_b1.as_secs_f64(),
        restart_took.as_secs_f64(),
        out.code.map_or("signal".to_string(), |c| c.to_string()),
        out.stderr.trim(),
        first_b2.as_secs_f64(),
        hex8(&verf_b1),
        hex8(&verf_b2),
        t_all.elapsed().as_secs_f64(),
    );
}

fn hex8(v: &[u8; 8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}
