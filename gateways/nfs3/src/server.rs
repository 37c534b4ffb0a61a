//! Starting the gateway: one RPC server carrying MOUNT and NFS, bound on
//! TCP+UDP on every NFS port and the MOUNT port, registered with the host's
//! portmapper (ours on 111, or rpcbind when it is already there), and a
//! background reaper closing idle fds.

use anyhow::Context;
use kiln_core::client::Volume;
use kiln_core::graph::VolumeSpec;
use kiln_portmap::pmap::{Mapping, Portmapper, PMAP_PORT};
use kiln_portmap::rpc::server::{serve_tcp_udp, ServeHandle};
use kiln_portmap::{RpcServer, ServerConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::{Gateway, VolumeCtx};
use crate::mount::MountProgram;
use crate::mount_types::{MOUNT_PROGRAM, MOUNT_V1, MOUNT_V3};
use crate::nfs::{NfsProgram, MAX_IO_TCP};
use crate::types::{NFS_PROGRAM, NFS_V3};

/// Where and how the gateway listens.
#[derive(Debug, Clone)]
pub struct NfsConfig {
    /// Address to bind.
    pub listen: IpAddr,
    /// NFS ports (TCP and UDP); the first is registered with the portmapper.
    /// Port 0 picks a free port.
    pub nfs_ports: Vec<u16>,
    /// MOUNT port (TCP and UDP).
    pub mount_port: u16,
    /// Portmapper port to serve or adopt; `None` registers nowhere.
    pub portmap_port: Option<u16>,
    /// Open files idle this long are closed.
    pub fd_idle: Duration,
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            nfs_ports: vec![2049, 38467],
            mount_port: 38465,
            portmap_port: Some(PMAP_PORT),
            fd_idle: Duration::from_secs(30),
        }
    }
}

/// A running gateway; dropping it stops every listener.
pub struct NfsServer {
    gw: Arc<Gateway>,
    nfs: Vec<ServeHandle>,
    mount: ServeHandle,
    portmap: Option<Portmapper>,
    reaper: tokio::task::JoinHandle<()>,
}

impl NfsServer {
    /// The bound NFS addresses, in `nfs_ports` order.
    pub fn nfs_addrs(&self) -> Vec<SocketAddr> {
        self.nfs.iter().map(|h| h.local_addr()).collect()
    }

    /// The bound MOUNT address.
    pub fn mount_addr(&self) -> SocketAddr {
        self.mount.local_addr()
    }

    /// The portmapper used (ours or the host's), if any.
    pub fn portmapper(&self) -> Option<&Portmapper> {
        self.portmap.as_ref()
    }

    /// This instance's WRITE/COMMIT verifier.
    pub fn write_verifier(&self) -> [u8; 8] {
        self.gw.write_verf
    }

    /// Open (files, directories) of volume `name`.
    pub fn open_fds(&self, name: &str) -> Option<(usize, usize)> {
        self.gw.volume(name).map(|v| v.fds.open_counts())
    }

    /// Serves until a listener fails.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let mut waits: Vec<_> = self.nfs.iter_mut().map(|h| Box::pin(h.wait())).collect();
        waits.push(Box::pin(self.mount.wait()));
        let (r, _, _) = futures_select_all(waits).await;
        r.context("nfs listener failed")
    }

    /// Unregisters from the portmapper and closes cached fds.
    pub async fn shutdown(self) {
        if let Some(pm) = &self.portmap {
            let _ = pm
                .unregister(&[
                    (NFS_PROGRAM, NFS_V3),
                    (MOUNT_PROGRAM, MOUNT_V1),
                    (MOUNT_PROGRAM, MOUNT_V3),
                ])
                .await;
        }
        for v in self.gw.volumes() {
            v.fds.clear();
        }
        self.reaper.abort();
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

/// Waits for the first of several futures.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futs: Vec<F>,
) -> (F::Output, usize, Vec<F>) {
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for i in 0..futs.len() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut futs[i]).poll(cx) {
                let rest = std::mem::take(&mut futs);
                return std::task::Poll::Ready((v, i, rest));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Serves `volumes` (already built and ready) over NFSv3 and MOUNT.
pub async fn serve_volumes(volumes: Vec<Arc<Volume>>, cfg: NfsConfig) -> anyhow::Result<NfsServer> {
    let ctxs = volumes
        .into_iter()
        .map(|v| VolumeCtx::new(v, cfg.fd_idle).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gw = Arc::new(Gateway::new(ctxs));
    let mut rpc = RpcServer::new(ServerConfig {
        max_record: MAX_IO_TCP as usize + 64 * 1024,
        ..ServerConfig::default()
    });
    rpc.register(Arc::new(NfsProgram::new(gw.clone())));
    rpc.register(Arc::new(MountProgram::new(gw.clone())));
    let rpc = Arc::new(rpc);
    let mut nfs = Vec::new();
    for port in &cfg.nfs_ports {
        let addr = SocketAddr::new(cfg.listen, *port);
        nfs.push(
            serve_tcp_udp(rpc.clone(), addr)
                .await
                .with_context(|| format!("binding nfs on {addr}"))?,
        );
    }
    let maddr = SocketAddr::new(cfg.listen, cfg.mount_port);
    let mount = serve_tcp_udp(rpc.clone(), maddr)
        .await
        .with_context(|| format!("binding mount on {maddr}"))?;
    let portmap = match cfg.portmap_port {
        None => None,
        Some(port) => match register(&cfg, port, &nfs, &mount).await {
            Ok(pm) => Some(pm),
            Err(e) => {
                // Clients can still mount with explicit ports
                // (mount -o port=2049,mountport=38465).
                tracing::error!(error = %format!("{e:#}"), "nfs: no portmapper registration; serving anyway");
                None
            }
        },
    };
    let reaper = {
        let gw = gw.clone();
        let every = (cfg.fd_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                for v in gw.volumes() {
                    v.fds.reap();
                }
            }
        })
    };
    tracing::info!(
        nfs = ?nfs.iter().map(|h| h.local_addr()).collect::<Vec<_>>(),
        mount = %mount.local_addr(),
        volumes = ?gw.volumes().map(|v| v.name.clone()).collect::<Vec<_>>(),
        "nfs: serving NFSv3 and MOUNT v1/v3 over tcp and udp"
    );
    Ok(NfsServer {
        gw,
        nfs,
        mount,
        portmap,
        reaper,
    })
}

/// Serves or adopts the portmapper on `port` and registers NFS and MOUNT.
async fn register(
    cfg: &NfsConfig,
    port: u16,
    nfs: &[ServeHandle],
    mount: &ServeHandle,
) -> anyhow::Result<Portmapper> {
    let pm = Portmapper::start(SocketAddr::new(cfg.listen, port))
        .await
        .context("portmapper")?;
    let mut maps = Vec::new();
    if let Some(first) = nfs.first() {
        maps.extend(Mapping::tcp_udp(
            NFS_PROGRAM,
            NFS_V3,
            first.local_addr().port(),
        ));
    }
    for v in [MOUNT_V1, MOUNT_V3] {
        maps.extend(Mapping::tcp_udp(
            MOUNT_PROGRAM,
            v,
            mount.local_addr().port(),
        ));
    }
    pm.register(&maps)
        .await
        .context("registering with the portmapper")?;
    Ok(pm)
}

/// Where the gateway gets its volume specs.
#[derive(Debug, Clone)]
pub enum SpecSource {
    /// Fetch these volumes' specs from management servers (`host:port`).
    #[cfg(feature = "mgmt")]
    Servers {
        /// Management servers to ask, in order.
        servers: Vec<String>,
        /// Volumes to serve.
        volumes: Vec<String>,
    },
    /// Specs given directly.
    Specs(Vec<VolumeSpec>),
}

/// The `kiln nfs` process: fetches specs, builds volumes, serves until a
/// listener fails.
pub async fn run_nfs(source: SpecSource, cfg: NfsConfig) -> anyhow::Result<()> {
    let specs = match source {
        SpecSource::Specs(s) => s,
        #[cfg(feature = "mgmt")]
        SpecSource::Servers { servers, volumes } => {
            let mut specs = Vec::new();
            for v in &volumes {
                specs.push(
                    kiln_mgmt::fetch_volume_spec(&servers, v)
                        .await
                        .with_context(|| format!("fetching the spec of volume {v}"))?,
                );
            }
            specs
        }
    };
    let mut vols = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        let vol = Arc::new(Volume::new(spec));
        if let Err(e) = vol.wait_ready(Duration::from_secs(30)).await {
            tracing::warn!(volume = %name, error = %e, "nfs: volume not ready yet; serving it anyway");
        }
        vols.push(vol);
    }
    let mut server = serve_volumes(vols, cfg).await?;
    server.wait().await
}
