//! kiln-nlm: NLM v4 (program 100021) and the gateway's own NSM v1 (100024)
//! for Kiln's NFS gateway. NLM locks become the volume's POSIX locks, so a
//! lock taken over NFS and one taken through FUSE exclude each other.
//!
//! Modules: `types` (XDR of both programs), `locks` (the lock manager:
//! owners, blocked locks, shares, grace), `ranges` (what an owner holds),
//! `monitor` (NSM records on disk),
//! `callback` (GRANTED, `_RES`, SM_NOTIFY to clients), `program` (the RPC
//! programs), `server` (`serve_nlm`).

pub mod callback;
pub mod locks;
pub mod monitor;
pub mod program;
pub mod ranges;
pub mod server;
pub mod types;

pub use locks::{owner_id, LockManager, NlmVolume, Peer};
pub use program::{NlmProgram, NsmProgram};
pub use server::{serve_nlm, NlmConfig, NlmError, NlmServer, DEFAULT_GRACE};
