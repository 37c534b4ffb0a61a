//! The one client library: a translator stack (`Xlator`) built from a volume
//! spec, and `Volume`, the handle every gateway (FUSE, NFS, Swift, HDFS) uses.
//!
//! Stack today: `distribute` (DHT) over `replicate` sets (replicated
//! volumes) or directly over one `protocol` client per brick.

pub mod distribute;
pub mod fd;
pub mod protocol;
pub mod replicate;
pub mod volume;
mod volume_graph;
pub mod xlator;

pub use fd::Fd;
pub use volume::Volume;
pub use xlator::{Caller, Xlator};
