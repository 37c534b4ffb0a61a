//! Whole messages through the RPC server core (`RpcServer::dispatch`) with
//! the portmapper program registered: call header, credential, program and
//! version checks, the duplicate request cache and the portmap procedures
//! (SET/UNSET from loopback and from afar). Every reply must decode and
//! carry the call's xid.
#![no_main]
use kiln_portmap::pmap::PortmapProgram;
use kiln_portmap::rpc::msg::ReplyStat;
use kiln_portmap::{RpcServer, ServerConfig, Transport};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let peer: SocketAddr = if sel & 1 == 0 {
        "127.0.0.1:700".parse().expect("addr")
    } else {
        "10.9.8.7:40000".parse().expect("addr")
    };
    let transport = if sel & 2 == 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let local: SocketAddr = "127.0.0.1:111".parse().expect("addr");
    let (rt, server) = env();
    if let Some(reply) = rt.block_on(server.dispatch(peer, local, transport, msg)) {
        let bytes = reply.to_vec();
        let (xid, _, _) = ReplyStat::decode_reply(&bytes).expect("a reply that decodes");
        assert_eq!(xid.to_be_bytes(), msg[..4], "reply xid");
    }
});

fn env() -> &'static (tokio::runtime::Runtime, RpcServer) {
    static ENV: OnceLock<(tokio::runtime::Runtime, RpcServer)> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let mut server = RpcServer::new(ServerConfig {
            drc_entries: 256,
            drc_bytes: 1 << 20,
            ..ServerConfig::default()
        });
        server.register(Arc::new(PortmapProgram::new()));
        (rt, server)
    })
}
