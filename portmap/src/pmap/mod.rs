//! Portmapper v2 (RFC 1833): types (`types`), the program (`program`) and
//! running or adopting the host's portmapper (`service`).

pub mod program;
pub mod service;
pub mod types;

pub use program::PortmapProgram;
pub use service::{PmapError, Portmapper};
pub use types::*;
