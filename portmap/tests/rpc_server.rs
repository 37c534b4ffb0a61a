//! The RPC core and the portmapper over real sockets: procedures, the RFC
//! 5531 error replies for bad input, record-mark abuse, UDP, the duplicate
//! request cache, and adopting an already running portmapper.

use async_trait::async_trait;
use kiln_portmap::pmap::{
    self, service, Mapping, Portmapper, IPPROTO_TCP, IPPROTO_UDP, PMAP_PROG, PMAP_VERS,
};
use kiln_portmap::rpc::client::{encode_call, udp_call, udp_call_raw, ClientError, RpcClient};
use kiln_portmap::rpc::msg::{AuthStat, ReplyStat};
use kiln_portmap::rpc::server::serve_tcp_udp;
use kiln_portmap::{CallContext, ProcError, RpcProgram, RpcServer, ServerConfig, XdrWriter};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn start_pmap() -> Portmapper {
    Portmapper::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn rpc_err(r: Result<Vec<u8>, ClientError>) -> ReplyStat {
    match r {
        Err(ClientError::Rpc(s)) => s,
        other => panic!("expected an rpc error, got {other:?}"),
    }
}

#[tokio::test]
async fn portmap_procedures() {
    let pm = start_pmap().await;
    let addr = pm.addr();
    assert!(!pm.is_external());
    service::null(addr).await.unwrap();
    let m = Mapping {
        prog: 100005,
        vers: 3,
        prot: IPPROTO_TCP,
        port: 38465,
    };
    assert!(service::set(addr, m).await.unwrap());
    assert!(
        !service::set(addr, m).await.unwrap(),
        "an existing mapping is not replaced"
    );
    assert_eq!(
        service::getport(addr, 100005, 3, IPPROTO_TCP)
            .await
            .unwrap(),
        38465
    );
    assert_eq!(
        service::getport(addr, 100005, 3, IPPROTO_UDP)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        service::getport(addr, PMAP_PROG, PMAP_VERS, IPPROTO_UDP)
            .await
            .unwrap(),
        addr.port() as u32
    );
    let all = service::dump(addr).await.unwrap();
    assert!(all.contains(&m));
    assert_eq!(all.len(), 3);
    assert!(service::unset(addr, 100005, 3).await.unwrap());
    assert_eq!(
        service::getport(addr, 100005, 3, IPPROTO_TCP)
            .await
            .unwrap(),
        0
    );
    // The same over UDP.
    let mut w = XdrWriter::new();
    Mapping {
        prog: PMAP_PROG,
        vers: 2,
        prot: IPPROTO_TCP,
        port: 0,
    }
    .encode(&mut w);
    let r = udp_call(
        addr,
        PMAP_PROG,
        2,
        pmap::PMAPPROC_GETPORT,
        None,
        w.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r, (addr.port() as u32).to_be_bytes());
    // CALLIT is refused.
    let mut c = RpcClient::connect(addr).await.unwrap();
    let st = rpc_err(c.call(PMAP_PROG, 2, pmap::PMAPPROC_CALLIT, &[0; 16]).await);
    assert_eq!(st, ReplyStat::ProcUnavail);
    // Our registrations go to the table.
    pm.register(&Mapping::tcp_udp(100003, 3, 2049))
        .await
        .unwrap();
    assert_eq!(
        service::getport(addr, 100003, 3, IPPROTO_UDP)
            .await
            .unwrap(),
        2049
    );
}

#[tokio::test]
async fn rpc_errors_for_bad_calls() {
    let pm = start_pmap().await;
    let addr = pm.addr();
    let mut c = RpcClient::connect(addr).await.unwrap();
    assert_eq!(
        rpc_err(c.call(123456, 1, 0, &[]).await),
        ReplyStat::ProgUnavail
    );
    assert_eq!(
        rpc_err(c.call(PMAP_PROG, 4, 0, &[]).await),
        ReplyStat::ProgMismatch { low: 2, high: 2 }
    );
    assert_eq!(
        rpc_err(c.call(PMAP_PROG, 2, 99, &[]).await),
        ReplyStat::ProcUnavail
    );
    // SET with 4 of its 16 bytes.
    assert_eq!(
        rpc_err(
            c.call(PMAP_PROG, 2, pmap::PMAPPROC_SET, &[0, 0, 0, 1])
                .await
        ),
        ReplyStat::GarbageArgs
    );

    // rpcvers 3.
    let mut msg = encode_call(77, PMAP_PROG, 2, 0, None, &[]);
    msg[8..12].copy_from_slice(&3u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::RpcMismatch { low: 2, high: 2 }
    );
    // Unknown auth flavor.
    let mut msg = encode_call(78, PMAP_PROG, 2, 0, None, &[]);
    msg[24..28].copy_from_slice(&99u32.to_be_bytes());
    let r = c.call_raw(&msg).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    // AUTH_SYS whose body is garbage (gid count 1000).
    let mut w = XdrWriter::new();
    for v in [79u32, 0, 2, PMAP_PROG, 2, 0, 1, 20, 0, 0, 0, 0, 1000] {
        w.put_u32(v);
    }
    w.put_u32(0);
    w.put_u32(0);
    let r = c.call_raw(w.as_bytes()).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    // Credential length beyond the message.
    let mut w = XdrWriter::new();
    for v in [80u32, 0, 2, PMAP_PROG, 2, 0, 1, 0x7fff_0000] {
        w.put_u32(v);
    }
    let r = c.call_raw(w.as_bytes()).await.unwrap();
    assert_eq!(
        ReplyStat::decode_reply(&r).unwrap().1,
        ReplyStat::AuthError(AuthStat::BadCred)
    );
    // A reply sent to the server and a 3-byte message are dropped silently;
    // the connection still works.
    c.send_raw_record(&[0, 0, 0, 5, 0, 0, 0, 1]).await.unwrap();
    c.send_raw_record(&[1, 2, 3]).await.unwrap();
    c.call(PMAP_PROG, 2, 0, &[]).await.unwrap();
    // A call split in three fragments.
    let msg = encode_call(81, PMAP_PROG, 2, pmap::PMAPPROC_DUMP, None, &[]);
    let mut wire = Vec::new();
    for (i, chunk) in msg.chunks(10).enumerate() {
        let last = (i + 1) * 10 >= msg.len();
        let h = chunk.len() as u32 | if last { 1 << 31 } else { 0 };
        wire.extend_from_slice(&h.to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    c.send_bytes(&wire).await.unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(ReplyStat::decode_reply(&r).unwrap().0, 81);

    // An oversize record mark closes that connection only.
    let mut bad = RpcClient::connect(addr).await.unwrap();
    bad.send_bytes(&(0x7fff_fff0u32 | 1 << 31).to_be_bytes())
        .await
        .unwrap();
    assert!(matches!(
        bad.read_reply().await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    // Endless tiny non-last fragments are cut off too.
    let mut bad = RpcClient::connect(addr).await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.extend_from_slice(&[0, 0, 0, 0]);
    }
    let _ = bad.send_bytes(&flood).await;
    assert!(matches!(
        bad.read_reply().await,
        Err(ClientError::Closed) | Err(ClientError::Io(_))
    ));
    let mut c2 = RpcClient::connect(addr).await.unwrap();
    c2.call(PMAP_PROG, 2, 0, &[]).await.unwrap();

    // UDP: garbage datagrams are ignored, errors are answered.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        udp_call_raw(addr, &[9, 9], Duration::from_millis(200)),
    )
    .await;
    let st = udp_call(addr, PMAP_PROG, 9, 0, None, &[], Duration::from_secs(3)).await;
    assert!(matches!(
        st,
        Err(ClientError::Rpc(ReplyStat::ProgMismatch {
            low: 2,
            high: 2
        }))
    ));
}

/// Counts executions of its one non-idempotent procedure.
struct Counter {
    runs: AtomicU32,
}

#[async_trait]
impl RpcProgram for Counter {
    fn program(&self) -> u32 {
        400000
    }
    fn versions(&self) -> &[u32] {
        &[1, 2]
    }
    fn name(&self) -> &'static str {
        "counter"
    }
    fn is_idempotent(&self, _vers: u32, proc_: u32) -> bool {
        proc_ != 1
    }
    async fn call(
        &self,
        _ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        _args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        match proc_ {
            0 => Ok(Vec::new()),
            1 | 2 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(n.to_be_bytes().to_vec())
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

#[tokio::test]
async fn duplicate_request_cache_replays_non_idempotent_calls() {
    let counter = Arc::new(Counter {
        runs: AtomicU32::new(0),
    });
    let mut server = RpcServer::new(ServerConfig::default());
    server.register(counter.clone());
    let serve = serve_tcp_udp(Arc::new(server), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr: SocketAddr = serve.local_addr();
    let mut c = RpcClient::connect(addr).await.unwrap();
    let msg = encode_call(4242, 400000, 2, 1, None, &[0, 0, 0, 7]);
    // Sent twice at once: the copy arriving during execution is dropped.
    c.send_raw_record(&msg).await.unwrap();
    c.send_raw_record(&msg).await.unwrap();
    let first = c.read_reply().await.unwrap();
    // Sent again later: the cached reply comes back.
    let again = c.call_raw(&msg).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
    // An idempotent procedure runs every time.
    let msg2 = encode_call(4243, 400000, 2, 2, None, &[]);
    c.call_raw(&msg2).await.unwrap();
    c.call_raw(&msg2).await.unwrap();
    assert_eq!(counter.runs.load(Ordering::SeqCst), 3);
    // Over UDP the retransmission is also answered from the cache.
    let msg3 = encode_call(4244, 400000, 1, 1, None, &[]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(addr).await.unwrap();
    let mut a = vec![0u8; 1024];
    let mut b = vec![0u8; 1024];
    sock.send(&msg3).await.unwrap();
    let na = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut a))
        .await
        .unwrap()
        .unwrap();
    sock.send(&msg3).await.unwrap();
    let nb = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a[..na], b[..nb]);
    assert_eq!(counter.runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_existing_portmapper_is_adopted() {
    let first = start_pmap().await;
    let second = Portmapper::start(first.addr()).await.unwrap();
    assert!(second.is_external());
    second
        .register(&Mapping::tcp_udp(100003, 3, 2049))
        .await
        .unwrap();
    // Registering again replaces (UNSET first) rather than failing.
    second
        .register(&Mapping::tcp_udp(100003, 3, 2050))
        .await
        .unwrap();
    assert_eq!(
        service::getport(first.addr(), 100003, 3, IPPROTO_TCP)
            .await
            .unwrap(),
        2050
    );
    second.unregister(&[(100003, 3)]).await.unwrap();
    assert_eq!(
        service::getport(first.addr(), 100003, 3, IPPROTO_TCP)
            .await
            .unwrap(),
        0
    );
    // A port held by something that is not a portmapper is an error.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = l.local_addr().unwrap();
    let _u = std::net::UdpSocket::bind(taken);
    drop(l);
    let l = kiln_portmap::rpc::server::bind_tcp(taken).unwrap();
    let busy = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
    });
    assert!(Portmapper::start(taken).await.is_err());
    busy.abort();
}
