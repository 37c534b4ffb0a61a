//! Running a portmapper: `Portmapper::start` serves our own on TCP+UDP, or,
//! when the port is taken by a portmapper already running on the host
//! (rpcbind), uses that one; `register`/`unregister` put Kiln's programs in
//! whichever it is. Plus the client calls SET/UNSET/GETPORT/DUMP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::program::PortmapProgram;
use super::types::*;
use crate::rpc::client::{udp_call, ClientError, RpcClient};
use crate::rpc::server::{serve_tcp_udp, RpcServer, ServeHandle, ServerConfig};
use crate::xdr::{XdrReader, XdrWriter};

/// Portmapper failures.
#[derive(Debug, thiserror::Error)]
pub enum PmapError {
    /// The port is taken by something that does not answer as a portmapper.
    #[error("port {0} is in use and no portmapper answers there")]
    PortTaken(SocketAddr),
    /// Socket error.
    #[error("portmap: {0}")]
    Io(#[from] std::io::Error),
    /// A call to the external portmapper failed.
    #[error("portmap call: {0}")]
    Call(#[from] ClientError),
    /// The external portmapper refused a SET.
    #[error("portmapper at {addr} refused to register program {prog} v{vers}")]
    Refused {
        /// The portmapper.
        addr: SocketAddr,
        /// Program.
        prog: u32,
        /// Version.
        vers: u32,
    },
}

enum Mode {
    Own {
        table: Arc<PortmapProgram>,
        _serve: ServeHandle,
    },
    External,
}

/// The host's portmapper as Kiln uses it.
pub struct Portmapper {
    addr: SocketAddr,
    mode: Mode,
}

impl Portmapper {
    /// Serves a portmapper on `addr` (TCP and UDP), or adopts the one
    /// already listening there.
    pub async fn start(addr: SocketAddr) -> Result<Portmapper, PmapError> {
        let table = Arc::new(PortmapProgram::new());
        let mut server = RpcServer::new(ServerConfig {
            max_record: 64 * 1024,
            ..ServerConfig::default()
        });
        server.register(table.clone());
        match serve_tcp_udp(Arc::new(server), addr).await {
            Ok(serve) => {
                let local = serve.local_addr();
                for m in Mapping::tcp_udp(PMAP_PROG, PMAP_VERS, local.port()) {
                    table.insert(m);
                }
                tracing::info!(addr = %local, "portmap: serving our own portmapper (program 100000 v2, tcp+udp)");
                Ok(Portmapper {
                    addr: local,
                    mode: Mode::Own {
                        table,
                        _serve: serve,
                    },
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let probe = probe_addr(addr);
                match null(probe).await {
                    Ok(()) => {
                        tracing::info!(addr = %probe, "portmap: a portmapper (rpcbind) already runs on this host; registering Kiln's programs with it instead of starting ours");
                        Ok(Portmapper {
                            addr: probe,
                            mode: Mode::External,
                        })
                    }
                    Err(_) => Err(PmapError::PortTaken(addr)),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where the portmapper answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when it is the host's existing portmapper, not ours.
    pub fn is_external(&self) -> bool {
        matches!(self.mode, Mode::External)
    }

    /// Registers mappings, replacing older ones of the same program/version.
    pub async fn register(&self, maps: &[Mapping]) -> Result<(), PmapError> {
        match &self.mode {
            Mode::Own { table, .. } => {
                for m in maps {
                    table.insert(*m);
                }
                Ok(())
            }
            Mode::External => {
                let mut seen = Vec::new();
                for m in maps {
                    if !seen.contains(&(m.prog, m.vers)) {
                        seen.push((m.prog, m.vers));
                        let _ = unset(self.addr, m.prog, m.vers).await;
                    }
                }
                for m in maps {
                    if !set(self.addr, *m).await? {
                        return Err(PmapError::Refused {
                            addr: self.addr,
                            prog: m.prog,
                            vers: m.vers,
                        });
                    }
                    tracing::info!(portmapper = %self.addr, prog = m.prog, vers = m.vers, prot = m.prot, port = m.port, "portmap: registered");
                }
                Ok(())
            }
        }
    }

    /// Removes every mapping of these program versions.
    pub async fn unregister(&self, progs: &[(u32, u32)]) -> Result<(), PmapError> {
        for &(prog, vers) in progs {
            match &self.mode {
                Mode::Own { table, .. } => {
                    table.remove(prog, vers);
                }
                Mode::External => {
                    unset(self.addr, prog, vers).await?;
                }
            }
        }
        Ok(())
    }
}

/// The address to reach a portmapper bound on `addr` (loopback for a wildcard).
fn probe_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

async fn call(addr: SocketAddr, proc_: u32, args: &[u8]) -> Result<Vec<u8>, ClientError> {
    match RpcClient::connect(addr).await {
        Ok(mut c) => c.call(PMAP_PROG, PMAP_VERS, proc_, args).await,
        // Some portmappers listen on UDP only.
        Err(_) => {
            udp_call(
                addr,
                PMAP_PROG,
                PMAP_VERS,
                proc_,
                None,
                args,
                Duration::from_secs(3),
            )
            .await
        }
    }
}

/// PMAPPROC_NULL: is a portmapper there?
pub async fn null(addr: SocketAddr) -> Result<(), ClientError> {
    call(addr, PMAPPROC_NULL, &[]).await.map(|_| ())
}

/// PMAPPROC_SET.
pub async fn set(addr: SocketAddr, m: Mapping) -> Result<bool, ClientError> {
    let mut w = XdrWriter::new();
    m.encode(&mut w);
    let r = call(addr, PMAPPROC_SET, w.as_bytes()).await?;
    Ok(XdrReader::new(&r).get_bool()?)
}

/// PMAPPROC_UNSET (every protocol of `prog`/`vers`).
pub async fn unset(addr: SocketAddr, prog: u32, vers: u32) -> Result<bool, ClientError> {
    let mut w = XdrWriter::new();
    Mapping {
        prog,
        vers,
        prot: 0,
        port: 0,
    }
    .encode(&mut w);
    let r = call(addr, PMAPPROC_UNSET, w.as_bytes()).await?;
    Ok(XdrReader::new(&r).get_bool()?)
}

/// PMAPPROC_GETPORT: the port, 0 if not registered.
pub async fn getport(
    addr: SocketAddr,
    prog: u32,
    vers: u32,
    prot: u32,
) -> Result<u32, ClientError> {
    let mut w = XdrWriter::new();
    Mapping {
        prog,
        vers,
        prot,
        port: 0,
    }
    .encode(&mut w);
    let r = call(addr, PMAPPROC_GETPORT, w.as_bytes()).await?;
    Ok(XdrReader::new(&r).get_u32()?)
}

/// PMAPPROC_DUMP.
pub async fn dump(addr: SocketAddr) -> Result<Vec<Mapping>, ClientError> {
    let r = call(addr, PMAPPROC_DUMP, &[]).await?;
    Ok(decode_pmaplist(&mut XdrReader::new(&r), 4096)?)
}
