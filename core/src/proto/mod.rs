//! The client<->brick wire protocol: `messages` (what is asked and answered)
//! and `frame` (how a message travels on a TCP connection, with bulk data
//! carried beside the serialized header, never through serde).

pub mod frame;
pub mod messages;

pub use frame::{Frame, FrameCodec, FrameKind, MAX_FRAME};
pub use messages::*;

/// Version of the protocol; a brick refuses a handshake from another version.
pub const PROTOCOL_VERSION: u32 = 2;
