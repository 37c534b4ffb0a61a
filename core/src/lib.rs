//! kiln-core: everything a Kiln volume is made of.
//!
//! `proto` is the client<->brick wire protocol, `brick` the server side of one
//! brick, `client` the translator stack a gateway mounts, `graph` the volume spec.

pub mod brick;
pub mod client;
pub mod error;
pub mod gfid;
pub mod graph;
pub mod iatt;
pub mod name;
pub mod proto;
pub mod xattr_names;

pub use error::{FsError, FsResult};
pub use gfid::Gfid;
pub use iatt::{FileKind, Iatt, SetAttr, Statvfs};
pub use name::Name;
