//! `MgmtError`: what can go wrong between a management client (the CLI, a
//! FUSE client fetching its volume spec, a peer) and a management daemon.

use std::io;

/// A failure talking to a management daemon.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The daemon could not be reached at all.
    #[error("{addr}: Transport endpoint is not connected ({err})")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why the connection failed.
        err: io::Error,
    },
    /// The connection broke or timed out in the middle of an exchange.
    #[error("{addr}: connection lost: {reason}")]
    ConnectionLost {
        /// The peer's address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The other side did not answer in time.
    #[error("{addr}: no answer within {secs} s")]
    Timeout {
        /// The peer's address.
        addr: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The other side sent something this side cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Pool authentication failed (wrong or missing pool secret).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(String),
    /// No server in the list could answer.
    #[error("no management server answered: {0}")]
    NoServer(String),
}

impl MgmtError {
    /// True if the daemon was never reached (so another server may be tried).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            MgmtError::Unreachable { .. }
                | MgmtError::ConnectionLost { .. }
                | MgmtError::Timeout { .. }
        )
    }
}
