//! The management protocol on port 24007 (and the local `@kiln-mgmt` socket):
//! `MgmtRequest` / `MgmtReply`, bincode-encoded in the header of
//! `kiln_core::proto::FrameCodec` frames. Raft payloads ride in the frame's
//! data section. Every connection opens with the daemon's `Hello`.
//!
//! Connection flow:
//! 1. daemon → `Hello { version, nonce, uuid }` (frame kind Reply, xid 0);
//! 2. a peer proves it holds the pool secret with `Auth` (HMAC over both
//!    nonces) and the daemon proves it back in `AuthOk`; only then are
//!    `Peer(..)` requests served on that connection;
//! 3. the CLI sends `Cli(..)` (local socket, loopback, or a pool member's
//!    address), a client `GetSpec`, an unjoined server receives `ProbeJoin`.

use kiln_config::VolumeConfig;
use kiln_core::graph::VolumeSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of this protocol; both sides check it in `Hello` / `Auth`.
pub const MGMT_PROTOCOL_VERSION: u32 = 1;

/// The default management port.
pub const MGMT_PORT: u16 = 24007;

/// A request to a management daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MgmtRequest {
    /// Peer authentication (answer to the daemon's `Hello` nonce).
    Auth {
        /// The sender's protocol version.
        version: u32,
        /// The sender's node UUID.
        uuid: String,
        /// The sender's own nonce (the daemon proves itself over it).
        client_nonce: Vec<u8>,
        /// HMAC-SHA256(secret, label | server nonce | client nonce).
        proof: Vec<u8>,
    },
    /// An admin command from the CLI.
    Cli(CliRequest),
    /// A client asks for a volume's spec (open to anyone).
    GetSpec {
        /// Volume name.
        volume: String,
    },
    /// A pool member asks a lone server to join its pool.
    ProbeJoin {
        /// The sender's protocol version.
        version: u32,
        /// The pool secret (hex) the joining server adopts.
        secret: String,
        /// The prober's node UUID.
        prober_uuid: String,
    },
    /// Server-to-server messages; need an authenticated connection.
    Peer(PeerRequest),
}

/// Messages between pool members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Liveness (and proof of membership, on an authenticated connection).
    Ping,
    /// A Raft message for the config store; the payload is the frame data.
    Raft,
    /// Check and stamp a brick directory for a new volume.
    StageBrick {
        /// Brick directory.
        path: String,
        /// The new volume's id.
        volume_id: String,
        /// `force` given to `volume create`.
        force: bool,
    },
    /// Undo `StageBrick` after a failed create (removes the volume-id stamp
    /// if it is still this volume's).
    UnstageBrick {
        /// Brick directory.
        path: String,
        /// The volume id that was stamped.
        volume_id: String,
    },
    /// Make sure this server's bricks of a volume run.
    EnsureBricks {
        /// The volume as committed.
        volume: VolumeConfig,
    },
    /// Stop this server's bricks of a volume.
    StopBricks {
        /// The volume.
        volume: VolumeConfig,
    },
    /// Live state of this server's bricks of a volume.
    BrickStatus {
        /// The volume.
        volume: VolumeConfig,
        /// Also gather file-system details.
        detail: bool,
    },
    /// The sender detached this server from the pool.
    Detached,
    /// State of this server's NFS gateway (`kiln nfs`).
    NfsStatus,
}

/// A daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MgmtReply {
    /// First frame on every connection.
    Hello {
        /// The daemon's protocol version.
        version: u32,
        /// A fresh random nonce for this connection.
        nonce: Vec<u8>,
        /// The daemon's node UUID.
        uuid: String,
    },
    /// Authentication accepted; the daemon's own proof.
    AuthOk {
        /// HMAC-SHA256(secret, label | client nonce | server nonce).
        proof: Vec<u8>,
    },
    /// Done, nothing to return.
    Ok,
    /// The request failed.
    Error(String),
    /// Answer to a CLI command.
    Cli(CliReply),
    /// A volume spec.
    Spec(VolumeSpec),
    /// `ProbeJoin` accepted: who joined.
    Joined {
        /// The joined server's UUID.
        uuid: String,
        /// Its Raft node id.
        raft_id: u64,
    },
    /// `ProbeJoin`: this server is already in the prober's pool.
    AlreadyMember {
        /// Its UUID.
        uuid: String,
    },
    /// Answer to `Raft`; the payload is the frame data.
    Raft,
    /// Answer to `EnsureBricks`.
    BricksStarted(Vec<BrickStartResult>),
    /// Answer to `BrickStatus`.
    BrickStates(Vec<BrickState>),
    /// Answer to `NfsStatus`; `None` when this server runs no NFS gateway
    /// at all (in-process tests).
    NfsState(Option<NfsServerState>),
}

/// An admin command (parsed by the CLI, executed by a daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CliRequest {
    /// `peer probe HOST[:PORT]`.
    PeerProbe {
        /// Host to probe.
        host: String,
    },
    /// `peer detach HOST [force]`.
    PeerDetach {
        /// Host to detach.
        host: String,
        /// Detach even if unreachable.
        force: bool,
    },
    /// `peer status`.
    PeerStatus,
    /// `pool list`.
    PoolList,
    /// `volume create NAME [replica N] [stripe N] [disperse N] [transport T] BRICK... [force]`.
    VolumeCreate(CreateArgs),
    /// `volume start NAME [force]`.
    VolumeStart {
        /// Volume.
        name: String,
        /// Restart dead bricks of a started volume.
        force: bool,
    },
    /// `volume stop NAME [force]`.
    VolumeStop {
        /// Volume.
        name: String,
        /// Stop even if some servers are unreachable.
        force: bool,
    },
    /// `volume delete NAME`.
    VolumeDelete {
        /// Volume.
        name: String,
    },
    /// `volume info [NAME|all]`.
    VolumeInfo {
        /// One volume, or all.
        name: Option<String>,
    },
    /// `volume status [NAME|all] [detail]`.
    VolumeStatus {
        /// One volume, or all.
        name: Option<String>,
        /// File-system details per brick.
        detail: bool,
    },
    /// `volume set NAME KEY VALUE`.
    VolumeSet {
        /// Volume.
        name: String,
        /// Option key.
        key: String,
        /// Value.
        value: String,
    },
    /// `volume reset NAME [KEY] [force]`.
    VolumeReset {
        /// Volume.
        name: String,
        /// One option, or all.
        key: Option<String>,
        /// Accepted for compatibility.
        force: bool,
    },
}

/// Arguments of `volume create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateArgs {
    /// Volume name.
    pub name: String,
    /// `replica N`.
    pub replica: Option<u32>,
    /// `stripe N`.
    pub stripe: Option<u32>,
    /// `disperse N`.
    pub disperse: Option<u32>,
    /// `transport tcp|rdma|tcp,rdma` (default `tcp`).
    pub transport: Option<String>,
    /// `HOST:/PATH` bricks, in order.
    pub bricks: Vec<String>,
    /// `force`.
    pub force: bool,
}

/// A daemon's answer to a CLI command: data for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CliReply {
    /// Success, with the message to print.
    Done(String),
    /// Failure, with the message to print.
    Failed(String),
    /// `peer status`: every other server of the pool.
    Peers(Vec<PeerRow>),
    /// `pool list`: every server, this one as `localhost`.
    Pool(Vec<PeerRow>),
    /// `volume info`.
    Volumes(Vec<VolumeView>),
    /// `volume status`.
    Status(Vec<VolumeStatusView>),
}

/// One server as `peer status` / `pool list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    /// UUID.
    pub uuid: String,
    /// Host name (`localhost` for the answering server in `pool list`).
    pub hostname: String,
    /// Whether it answered just now.
    pub connected: bool,
}

/// A volume as `volume info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    /// Name.
    pub name: String,
    /// `Distribute`, ...
    pub kind: String,
    /// Volume id.
    pub id: String,
    /// `Created`, `Started`, `Stopped`.
    pub status: String,
    /// `tcp`.
    pub transport: String,
    /// `HOST:/PATH` in order.
    pub bricks: Vec<String>,
    /// Options set with `volume set`.
    pub options: BTreeMap<String, String>,
    /// Bricks per replica set (1: not replicated).
    #[serde(default = "one")]
    pub replica_count: usize,
}

fn one() -> usize {
    1
}

/// A volume as `volume status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatusView {
    /// Name.
    pub name: String,
    /// Its bricks, in order.
    pub bricks: Vec<BrickState>,
    /// The NFS gateways of the pool's servers (none if `nfs.disable` is on).
    #[serde(default)]
    pub nfs: Vec<NfsServerState>,
}

/// Live state of one brick (answered by the server that owns it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickState {
    /// Index in the volume.
    pub index: usize,
    /// `HOST:/PATH`.
    pub brick: String,
    /// Port (0 if never started).
    pub port: u16,
    /// Whether its process runs.
    pub online: bool,
    /// Its process id, if online.
    pub pid: Option<u32>,
    /// File-system details (`volume status ... detail`).
    pub detail: Option<BrickDetail>,
}

/// File-system details of a brick (`volume status VOL detail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickDetail {
    /// File-system type (`xfs`, `ext4`).
    pub fs_type: String,
    /// Device (mount source).
    pub device: String,
    /// Mount options.
    pub mount_options: String,
    /// Inode size in bytes, if known.
    pub inode_size: Option<u64>,
    /// Free bytes (available to unprivileged users).
    pub free_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
    /// Total inodes.
    pub inode_count: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// Outcome of starting one brick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickStartResult {
    /// Index in the volume.
    pub index: usize,
    /// `HOST:/PATH`.
    pub brick: String,
    /// The port it listens on, or why it did not start.
    pub result: Result<u16, String>,
}

/// One server's NFS gateway as `volume status` shows it
/// (`NFS Server on HOST  PORT  Y  PID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsServerState {
    /// The server (`localhost` for the one answering the CLI).
    pub host: String,
    /// Its NFS port (2049).
    pub port: u16,
    /// Whether the gateway runs, accepts connections, and serves the volume
    /// (for `NfsStatus`: runs and accepts).
    pub online: bool,
    /// Its process id, if it runs.
    pub pid: Option<u32>,
    /// The volumes it serves.
    pub volumes: Vec<String>,
}
