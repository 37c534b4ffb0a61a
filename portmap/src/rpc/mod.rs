//! ONC-RPC v2 (RFC 5531): messages and credentials (`msg`), TCP record
//! marking (`record`), the server core with its program registry (`server`),
//! the duplicate request cache (`drc`) and a small client (`client`).

pub mod client;
pub mod drc;
pub mod msg;
pub mod record;
pub mod server;

pub use client::{ClientError, RpcClient};
pub use msg::{AuthStat, AuthSys, Credential, ReplyStat};
pub use server::{
    CallContext, ProcError, ProcResults, RpcProgram, RpcReply, RpcServer, ServeHandle,
    ServerConfig, Transport,
};
