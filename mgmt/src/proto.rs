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
//!    address), a client `GetSpec` / `WatchSpec`, an unjoined server
//!    receives `ProbeJoin`.

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
    /// A mounted client's subscription to its volume's spec (open to anyone,
    /// as `GetSpec`): answered with `Spec` as soon as the started volume's
    /// spec builds another graph than `known` (at once if it already does),
    /// else with `Ok` after `wait_secs` (at most 300) so the client knows
    /// the daemon is alive; the client then asks again.
    WatchSpec {
        /// Volume name.
        volume: String,
        /// The spec the client runs (`None`: answer with the current one).
        known: Option<VolumeSpec>,
        /// How long to hold the request without a change.
        wait_secs: u32,
    },
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
    /// A heal command for this server's self-heal daemon (`kiln shd`).
    Heal(ShdRequest),
    /// State of this server's self-heal daemon.
    ShdStatus,
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
    /// Answer to `Heal`: this server's bricks of the volume.
    Heal(Vec<BrickHeal>),
    /// Answer to `ShdStatus` (`port` unused); `None` when this server runs
    /// no heal daemon at all (in-process tests).
    ShdState(Option<NfsServerState>),
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
    /// `volume heal NAME [full|info [split-brain]|statistics|split-brain ...]`.
    VolumeHeal {
        /// Volume.
        name: String,
        /// What to do.
        op: HealOp,
    },
    /// `volume add-brick NAME [replica N] BRICK... [force]`.
    VolumeAddBrick {
        /// Volume.
        name: String,
        /// New replica count (`replica N`).
        replica: Option<u32>,
        /// `HOST:/PATH` bricks to add.
        bricks: Vec<String>,
        /// `force`.
        force: bool,
    },
}

/// The forms of `volume heal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealOp {
    /// `heal VOL`: crawl the pending indices now.
    Index,
    /// `heal VOL full`: crawl the whole tree of every replica set.
    Full,
    /// `heal VOL info`, `heal VOL info split-brain`.
    Info {
        /// Only entries in split-brain.
        split_brain: bool,
    },
    /// `heal VOL statistics`.
    Statistics,
    /// `heal VOL statistics heal-count`: how many entries each brick's
    /// index holds.
    HealCount,
    /// `heal VOL info healed` (GlusterFS 3.3): what the heal daemon healed
    /// lately, with times.
    InfoHealed,
    /// `heal VOL info heal-failed` (GlusterFS 3.3): what it failed to heal
    /// lately, with times.
    InfoHealFailed,
    /// `heal VOL split-brain bigger-file FILE`.
    BiggerFile(String),
    /// `heal VOL split-brain latest-mtime FILE`.
    LatestMtime(String),
    /// `heal VOL split-brain source-brick HOST:/BRICK [FILE]`.
    SourceBrick {
        /// The brick whose copies win.
        brick: String,
        /// One file, or every file in split-brain on that brick's set.
        file: Option<String>,
    },
}

/// A request to one server's self-heal daemon (over its control socket,
/// or from another server through `PeerRequest::Heal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShdRequest {
    /// Volume.
    pub volume: String,
    /// `Index`, `Full`, `Info` or `Statistics` (the split-brain forms are
    /// run by the management daemon itself).
    pub op: HealOp,
}

/// One brick's part of a heal answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickHeal {
    /// Index in the volume.
    pub index: usize,
    /// `HOST:/PATH`.
    pub brick: String,
    /// Whether its server's heal daemon answered for it.
    pub connected: bool,
    /// `info`: pending entries (paths where known, else `<gfid:...>`).
    pub entries: Vec<String>,
    /// `statistics`: its crawls, oldest first.
    pub crawls: Vec<CrawlRecord>,
    /// `info healed` / `info heal-failed`: when each entry was met
    /// (seconds since the epoch), parallel to `entries`.
    #[serde(default)]
    pub times: Vec<u64>,
    /// `statistics heal-count`: entries in the brick's index.
    #[serde(default)]
    pub count: u64,
}

/// One crawl of one brick by the heal daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlRecord {
    /// `INDEX` or `FULL`.
    pub kind: String,
    /// Start, seconds since the epoch.
    pub start: u64,
    /// End, seconds since the epoch (`None`: still running).
    pub end: Option<u64>,
    /// Inodes looked at.
    pub scanned: u64,
    /// Inodes repaired.
    pub healed: u64,
    /// Inodes whose heal failed (or stayed pending).
    pub failed: u64,
    /// Inodes in split-brain.
    pub split_brain: u64,
}

/// What `volume heal` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealView {
    /// Volume.
    pub volume: String,
    /// The command.
    pub op: HealOp,
    /// Per brick (info, statistics), in volume order.
    pub bricks: Vec<BrickHeal>,
    /// The message to print (heal, full, split-brain forms).
    pub message: String,
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
    /// `volume heal`.
    Heal(HealView),
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
    /// The self-heal daemons of the servers owning bricks (replicated
    /// volumes; `port` unused).
    #[serde(default)]
    pub shd: Vec<NfsServerState>,
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
