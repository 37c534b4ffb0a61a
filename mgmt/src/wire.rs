//! One management connection (TCP or the local unix socket) carrying
//! `MgmtRequest`/`MgmtReply` in `kiln_core::proto` frames: sending,
//! receiving with deadlines, and the client half of the opening exchange.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kiln_core::proto::frame::{decode_meta, encode_meta};
use kiln_core::proto::{Frame, FrameCodec, FrameKind};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::error::MgmtError;
use crate::proto::{MgmtReply, MgmtRequest, MGMT_PROTOCOL_VERSION};

/// A byte stream a connection can run over.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One framed connection.
pub(crate) struct Conn {
    framed: Framed<Box<dyn Stream>, FrameCodec>,
    /// The other side's address, for messages.
    pub(crate) addr: String,
    next_xid: u64,
}

impl Conn {
    /// Wraps a connected stream.
    pub(crate) fn new(stream: Box<dyn Stream>, addr: String) -> Conn {
        Conn {
            framed: Framed::new(stream, FrameCodec),
            addr,
            next_xid: 1,
        }
    }

    fn lost(&self, reason: impl ToString) -> MgmtError {
        MgmtError::ConnectionLost {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends one frame.
    pub(crate) async fn send_frame(&mut self, frame: Frame) -> Result<(), MgmtError> {
        self.framed.send(frame).await.map_err(|e| self.lost(e))
    }

    /// Receives one frame (`None` at a clean end of stream).
    pub(crate) async fn recv_frame(&mut self) -> Result<Option<Frame>, MgmtError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(f)) => Ok(Some(f)),
            Some(Err(e)) => Err(self.lost(e)),
        }
    }

    /// Sends a reply frame.
    pub(crate) async fn send_reply(
        &mut self,
        xid: u64,
        reply: &MgmtReply,
        data: Bytes,
    ) -> Result<(), MgmtError> {
        let meta = encode_meta(reply).map_err(|e| MgmtError::Protocol(e.to_string()))?;
        self.send_frame(Frame {
            kind: FrameKind::Reply,
            xid,
            meta,
            data,
        })
        .await
    }

    /// Receives a reply within `timeout`.
    pub(crate) async fn recv_reply(
        &mut self,
        timeout: Duration,
    ) -> Result<(u64, MgmtReply, Bytes), MgmtError> {
        let frame = match tokio::time::timeout(timeout, self.recv_frame()).await {
            Err(_) => {
                return Err(MgmtError::Timeout {
                    addr: self.addr.clone(),
                    secs: timeout.as_secs(),
                })
            }
            Ok(r) => r?,
        };
        let frame = frame.ok_or_else(|| self.lost("closed by the other side"))?;
        if frame.kind != FrameKind::Reply {
            return Err(MgmtError::Protocol("expected a reply frame".into()));
        }
        let reply: MgmtReply =
            decode_meta(&frame.meta).map_err(|e| MgmtError::Protocol(e.to_string()))?;
        Ok((frame.xid, reply, frame.data))
    }

    /// Sends a request and waits for its reply.
    pub(crate) async fn call(
        &mut self,
        req: &MgmtRequest,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(MgmtReply, Bytes), MgmtError> {
        let xid = self.next_xid;
        self.next_xid += 1;
        let meta = encode_meta(req).map_err(|e| MgmtError::Protocol(e.to_string()))?;
        self.send_frame(Frame {
            kind: FrameKind::Request,
            xid,
            meta,
            data,
        })
        .await?;
        let (rxid, reply, data) = self.recv_reply(timeout).await?;
        if rxid != xid {
            return Err(MgmtError::Protocol(format!(
                "reply for request {rxid}, expected {xid}"
            )));
        }
        Ok((reply, data))
    }

    /// Client side of the opening: reads the daemon's `Hello`, returns its
    /// nonce and UUID.
    pub(crate) async fn read_hello(&mut self) -> Result<(Vec<u8>, String), MgmtError> {
        let (_, reply, _) = self.recv_reply(CONNECT_TIMEOUT).await?;
        match reply {
            MgmtReply::Hello {
                version,
                nonce,
                uuid,
            } => {
                if version != MGMT_PROTOCOL_VERSION {
                    return Err(MgmtError::Protocol(format!(
                        "the daemon speaks management protocol {version}, this program {MGMT_PROTOCOL_VERSION}"
                    )));
                }
                Ok((nonce, uuid))
            }
            MgmtReply::Error(e) => Err(MgmtError::Remote(e)),
            other => Err(MgmtError::Protocol(format!(
                "expected Hello, got {other:?}"
            ))),
        }
    }
}
