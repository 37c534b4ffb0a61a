//! Client side of the management protocol: connecting to a daemon over TCP
//! or the local abstract socket, peer authentication, fetching a volume
//! spec for a FUSE client (`fetch_volume_spec`) and the volumes an NFS
//! gateway serves (`fetch_nfs_exports`).

use bytes::Bytes;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use crate::auth::{nonce, PoolSecret};
use crate::error::MgmtError;
use crate::net::{join_host_port, split_host_port};
use crate::proto::{
    CliReply, CliRequest, MgmtReply, MgmtRequest, MGMT_PORT, MGMT_PROTOCOL_VERSION,
};
use crate::wire::{Conn, CONNECT_TIMEOUT};

/// The abstract unix socket name the local daemon answers the CLI on.
pub(crate) const LOCAL_SOCKET: &[u8] = b"kiln-mgmt";

/// Connects over TCP to `addr` (`HOST[:PORT]`, default port 24007) and reads
/// the daemon's `Hello`. Returns the connection, the daemon's nonce and UUID.
pub(crate) async fn connect_tcp(addr: &str) -> Result<(Conn, Vec<u8>, String), MgmtError> {
    let (host, port) = split_host_port(addr, MGMT_PORT).map_err(MgmtError::Protocol)?;
    let target = join_host_port(&host, port);
    let unreachable = |err| MgmtError::Unreachable {
        addr: target.clone(),
        err,
    };
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => {
            return Err(unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            )))
        }
        Ok(Err(e)) => return Err(unreachable(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(Box::new(stream), target);
    let (nonce, uuid) = conn.read_hello().await?;
    Ok((conn, nonce, uuid))
}

/// Connects to the local daemon's abstract unix socket `@kiln-mgmt`.
pub(crate) async fn connect_local() -> Result<Conn, MgmtError> {
    let unreachable = |err| MgmtError::Unreachable {
        addr: "@kiln-mgmt".into(),
        err,
    };
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(LOCAL_SOCKET).map_err(unreachable)?;
    let std_stream = std::os::unix::net::UnixStream::connect_addr(&addr).map_err(unreachable)?;
    std_stream.set_nonblocking(true).map_err(unreachable)?;
    let stream = tokio::net::UnixStream::from_std(std_stream).map_err(unreachable)?;
    let mut conn = Conn::new(Box::new(stream), "@kiln-mgmt".into());
    conn.read_hello().await?;
    Ok(conn)
}

/// Proves to the daemon (whose `Hello` carried `server_nonce`) that this side
/// holds the pool secret, and checks the daemon's proof in return.
pub(crate) async fn authenticate(
    conn: &mut Conn,
    secret: &PoolSecret,
    my_uuid: &str,
    server_nonce: &[u8],
) -> Result<(), MgmtError> {
    let client_nonce = nonce();
    let req = MgmtRequest::Auth {
        version: MGMT_PROTOCOL_VERSION,
        uuid: my_uuid.to_string(),
        proof: secret.client_proof(server_nonce, &client_nonce),
        client_nonce: client_nonce.clone(),
    };
    let (reply, _) = conn.call(&req, Bytes::new(), CONNECT_TIMEOUT).await?;
    match reply {
        MgmtReply::AuthOk { proof } => {
            if secret.verify_server(&client_nonce, server_nonce, &proof) {
                Ok(())
            } else {
                Err(MgmtError::Auth(format!(
                    "{} does not hold this pool's secret",
                    conn.addr
                )))
            }
        }
        MgmtReply::Error(e) => Err(MgmtError::Auth(e)),
        other => Err(MgmtError::Protocol(format!(
            "unexpected answer to Auth: {other:?}"
        ))),
    }
}

/// Fetches a volume's spec from the first of `servers` (`HOST[:PORT]`,
/// the mount's server followed by its `backup-volfile-servers`) that answers.
pub async fn fetch_volume_spec(
    servers: &[String],
    volume: &str,
) -> Result<kiln_core::graph::VolumeSpec, MgmtError> {
    let mut errors = Vec::new();
    for server in servers {
        match fetch_from(server, volume).await {
            Ok(spec) => return Ok(spec),
            Err(e) => {
                tracing::warn!(server = %server, volume, error = %e, "volume spec fetch failed");
                errors.push(e);
            }
        }
    }
    // Prefer the answer of a server that was reached over a transport error.
    if let Some(pos) = errors.iter().position(|e| !e.is_transport()) {
        return Err(errors.swap_remove(pos));
    }
    Err(MgmtError::NoServer(
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

async fn fetch_from(server: &str, volume: &str) -> Result<kiln_core::graph::VolumeSpec, MgmtError> {
    let (mut conn, _, _) = connect_tcp(server).await?;
    let req = MgmtRequest::GetSpec {
        volume: volume.to_string(),
    };
    let (reply, _) = conn
        .call(&req, Bytes::new(), Duration::from_secs(30))
        .await?;
    match reply {
        MgmtReply::Spec(spec) => Ok(spec),
        MgmtReply::Error(e) => Err(MgmtError::Remote(e)),
        other => Err(MgmtError::Protocol(format!(
            "unexpected answer to GetSpec: {other:?}"
        ))),
    }
}

/// The volumes an NFS gateway serves: every started volume whose
/// `nfs.disable` is not on, asked of the first of `servers` that answers
/// (a CLI request, so the caller must be on a server of the pool).
pub async fn fetch_nfs_exports(servers: &[String]) -> Result<Vec<String>, MgmtError> {
    let mut last = None;
    for server in servers {
        match exports_from(server).await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "volume list fetch failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| MgmtError::NoServer("no management server given".into())))
}

async fn exports_from(server: &str) -> Result<Vec<String>, MgmtError> {
    let (mut conn, _, _) = connect_tcp(server).await?;
    let req = MgmtRequest::Cli(CliRequest::VolumeInfo { name: None });
    let (reply, _) = conn
        .call(&req, Bytes::new(), Duration::from_secs(30))
        .await?;
    match reply {
        MgmtReply::Cli(CliReply::Volumes(vols)) => Ok(vols
            .into_iter()
            .filter(|v| v.status == "Started" && !crate::options::nfs_disabled(&v.options))
            .map(|v| v.name)
            .collect()),
        MgmtReply::Cli(CliReply::Failed(e)) | MgmtReply::Error(e) => Err(MgmtError::Remote(e)),
        other => Err(MgmtError::Protocol(format!(
            "unexpected answer to volume info: {other:?}"
        ))),
    }
}
