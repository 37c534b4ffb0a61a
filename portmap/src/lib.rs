//! kiln-portmap: the ONC-RPC server core every Kiln RPC gateway shares (XDR,
//! record marking, TCP+UDP servers, AUTH_SYS, duplicate request cache), and
//! the portmapper v2 program (100000) with `serve_portmap`.

pub mod pmap;
pub mod rpc;
pub mod xdr;

pub use pmap::{Mapping, PmapError, Portmapper};
pub use rpc::{
    CallContext, Credential, ProcError, ProcResults, RpcProgram, RpcServer, ServerConfig, Transport,
};
pub use xdr::{XdrError, XdrReader, XdrResult, XdrWriter};

/// Serves a portmapper on `addr` (or adopts the host's rpcbind there).
pub async fn serve_portmap(addr: std::net::SocketAddr) -> Result<Portmapper, PmapError> {
    Portmapper::start(addr).await
}
