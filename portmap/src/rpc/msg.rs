//! ONC-RPC v2 messages, transcribed from RFC 5531 §9 (with RFC 1057 names):
//! call and reply headers, accepted/rejected reply statuses, opaque_auth and
//! the AUTH_SYS credential (RFC 5531 Appendix A).

use crate::xdr::{XdrError, XdrReader, XdrResult, XdrWriter};

/// `rpcvers` this implementation speaks (RFC 5531 §9: "MUST be equal to 2").
pub const RPC_VERSION: u32 = 2;

/// `msg_type` CALL.
pub const CALL: u32 = 0;
/// `msg_type` REPLY.
pub const REPLY: u32 = 1;
/// `reply_stat` MSG_ACCEPTED.
pub const MSG_ACCEPTED: u32 = 0;
/// `reply_stat` MSG_DENIED.
pub const MSG_DENIED: u32 = 1;

/// `auth_flavor` AUTH_NONE (RFC 5531 §8.1).
pub const AUTH_NONE: u32 = 0;
/// `auth_flavor` AUTH_SYS (a.k.a. AUTH_UNIX), RFC 5531 Appendix A.
pub const AUTH_SYS: u32 = 1;
/// `auth_flavor` AUTH_SHORT.
pub const AUTH_SHORT: u32 = 2;

/// `opaque_auth` bodies are at most 400 bytes (RFC 5531 §8.2).
pub const MAX_AUTH_BYTES: usize = 400;
/// AUTH_SYS `machinename<255>`.
pub const MAX_MACHINE_NAME: usize = 255;
/// AUTH_SYS `gids<16>`.
pub const MAX_GIDS: usize = 16;

/// `accept_stat` (RFC 5531 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStat {
    /// RPC executed successfully.
    Success = 0,
    /// Remote hasn't exported the program.
    ProgUnavail = 1,
    /// Remote can't support the version number.
    ProgMismatch = 2,
    /// Program can't support the procedure.
    ProcUnavail = 3,
    /// Procedure can't decode the params.
    GarbageArgs = 4,
    /// E.g. memory allocation failure.
    SystemErr = 5,
}

/// `auth_stat` (RFC 5531 §9): why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStat {
    /// Success.
    Ok = 0,
    /// Bad credential (seal broken).
    BadCred = 1,
    /// Client must begin a new session.
    RejectedCred = 2,
    /// Bad verifier (seal broken).
    BadVerf = 3,
    /// Verifier expired or replayed.
    RejectedVerf = 4,
    /// Rejected for security reasons.
    TooWeak = 5,
    /// Bogus response verifier.
    InvalidResp = 6,
    /// Reason unknown.
    Failed = 7,
}

impl AuthStat {
    /// Decodes an `auth_stat`.
    pub fn from_u32(v: u32) -> Option<AuthStat> {
        Some(match v {
            0 => AuthStat::Ok,
            1 => AuthStat::BadCred,
            2 => AuthStat::RejectedCred,
            3 => AuthStat::BadVerf,
            4 => AuthStat::RejectedVerf,
            5 => AuthStat::TooWeak,
            6 => AuthStat::InvalidResp,
            7 => AuthStat::Failed,
            _ => return None,
        })
    }
}

/// `opaque_auth`: a flavor and its (borrowed) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueAuth<'a> {
    /// `auth_flavor`.
    pub flavor: u32,
    /// Flavor-specific body, at most 400 bytes.
    pub body: &'a [u8],
}

impl<'a> OpaqueAuth<'a> {
    /// AUTH_NONE with an empty body.
    pub const NONE: OpaqueAuth<'static> = OpaqueAuth {
        flavor: AUTH_NONE,
        body: &[],
    };

    /// Decodes an `opaque_auth`.
    pub fn decode(r: &mut XdrReader<'a>) -> XdrResult<Self> {
        let flavor = r.get_u32()?;
        let body = r.get_opaque(MAX_AUTH_BYTES)?;
        Ok(OpaqueAuth { flavor, body })
    }

    /// Encodes an `opaque_auth`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_u32(self.flavor);
        w.put_opaque(self.body);
    }
}

/// `authsys_parms` (RFC 5531 Appendix A).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSys {
    /// Arbitrary id the caller machine may generate.
    pub stamp: u32,
    /// The caller's host name.
    pub machinename: Vec<u8>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups (at most 16).
    pub gids: Vec<u32>,
}

impl AuthSys {
    /// Decodes a credential body; the whole body must be consumed.
    pub fn decode(body: &[u8]) -> XdrResult<AuthSys> {
        let mut r = XdrReader::new(body);
        let stamp = r.get_u32()?;
        let machinename = r.get_string(MAX_MACHINE_NAME)?.to_vec();
        let uid = r.get_u32()?;
        let gid = r.get_u32()?;
        let n = r.get_count(MAX_GIDS, 4)?;
        let mut gids = Vec::with_capacity(n);
        for _ in 0..n {
            gids.push(r.get_u32()?);
        }
        r.finish()?;
        Ok(AuthSys {
            stamp,
            machinename,
            uid,
            gid,
            gids,
        })
    }

    /// Encodes the credential body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.put_u32(self.stamp);
        w.put_string(&self.machinename);
        w.put_u32(self.uid);
        w.put_u32(self.gid);
        w.put_u32(self.gids.len() as u32);
        for g in &self.gids {
            w.put_u32(*g);
        }
        w.into_bytes()
    }
}

/// The caller's identity, as its credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// AUTH_NONE: anonymous.
    None,
    /// AUTH_SYS: uid, gid, groups as the client claims them.
    Sys(AuthSys),
}

impl Credential {
    /// Validates a call's credential: AUTH_NONE and AUTH_SYS are accepted,
    /// anything else or a malformed body is AUTH_BADCRED.
    pub fn from_auth(cred: &OpaqueAuth<'_>) -> Result<Credential, AuthStat> {
        match cred.flavor {
            AUTH_NONE => Ok(Credential::None),
            AUTH_SYS => AuthSys::decode(cred.body)
                .map(Credential::Sys)
                .map_err(|_| AuthStat::BadCred),
            _ => Err(AuthStat::BadCred),
        }
    }
}

/// `call_body` with its `xid` (RFC 5531 §9); the procedure's arguments follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader<'a> {
    /// Transaction id.
    pub xid: u32,
    /// `rpcvers` (2).
    pub rpcvers: u32,
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
    /// Credential.
    pub cred: OpaqueAuth<'a>,
    /// Verifier.
    pub verf: OpaqueAuth<'a>,
}

/// Why a received message is not a call that can be dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Too short to hold an xid and message type, or not a CALL: dropped.
    NotACall,
    /// `rpcvers` != 2: answered with RPC_MISMATCH.
    RpcMismatch {
        /// The call's xid.
        xid: u32,
    },
    /// The credential or verifier did not decode: answered AUTH_BADCRED.
    BadAuth {
        /// The call's xid.
        xid: u32,
    },
}

impl<'a> CallHeader<'a> {
    /// Decodes a call header, returning it and the procedure arguments.
    pub fn decode(msg: &'a [u8]) -> Result<(CallHeader<'a>, &'a [u8]), CallError> {
        let mut r = XdrReader::new(msg);
        let (xid, mtype) = match (r.get_u32(), r.get_u32()) {
            (Ok(x), Ok(t)) => (x, t),
            _ => return Err(CallError::NotACall),
        };
        if mtype != CALL {
            return Err(CallError::NotACall);
        }
        let rpcvers = r.get_u32().map_err(|_| CallError::NotACall)?;
        if rpcvers != RPC_VERSION {
            return Err(CallError::RpcMismatch { xid });
        }
        let head = (|| -> XdrResult<(u32, u32, u32, OpaqueAuth<'a>, OpaqueAuth<'a>)> {
            Ok((
                r.get_u32()?,
                r.get_u32()?,
                r.get_u32()?,
                OpaqueAuth::decode(&mut r)?,
                OpaqueAuth::decode(&mut r)?,
            ))
        })();
        let (prog, vers, proc_, cred, verf) = head.map_err(|_| CallError::BadAuth { xid })?;
        let args = r.rest();
        Ok((
            CallHeader {
                xid,
                rpcvers,
                prog,
                vers,
                proc_,
                cred,
                verf,
            },
            args,
        ))
    }

    /// Encodes the header of a call (a client's side).
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_u32(self.xid);
        w.put_u32(CALL);
        w.put_u32(self.rpcvers);
        w.put_u32(self.prog);
        w.put_u32(self.vers);
        w.put_u32(self.proc_);
        self.cred.encode(w);
        self.verf.encode(w);
    }
}

/// How a call was answered (RFC 5531 §9 `reply_body`), minus the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStat {
    /// MSG_ACCEPTED / SUCCESS: procedure results follow.
    Success,
    /// MSG_ACCEPTED / PROG_UNAVAIL.
    ProgUnavail,
    /// MSG_ACCEPTED / PROG_MISMATCH with the supported version range.
    ProgMismatch {
        /// Lowest version supported.
        low: u32,
        /// Highest version supported.
        high: u32,
    },
    /// MSG_ACCEPTED / PROC_UNAVAIL.
    ProcUnavail,
    /// MSG_ACCEPTED / GARBAGE_ARGS.
    GarbageArgs,
    /// MSG_ACCEPTED / SYSTEM_ERR.
    SystemErr,
    /// MSG_DENIED / RPC_MISMATCH with the supported rpcvers range.
    RpcMismatch {
        /// Lowest rpcvers.
        low: u32,
        /// Highest rpcvers.
        high: u32,
    },
    /// MSG_DENIED / AUTH_ERROR.
    AuthError(AuthStat),
}

impl ReplyStat {
    /// Encodes `xid`, REPLY and this status (results, if any, follow).
    pub fn encode_header(&self, xid: u32, w: &mut XdrWriter) {
        w.put_u32(xid);
        w.put_u32(REPLY);
        let accepted = |w: &mut XdrWriter, stat: AcceptStat| {
            w.put_u32(MSG_ACCEPTED);
            OpaqueAuth::NONE.encode(w);
            w.put_u32(stat as u32);
        };
        match *self {
            ReplyStat::Success => accepted(w, AcceptStat::Success),
            ReplyStat::ProgUnavail => accepted(w, AcceptStat::ProgUnavail),
            ReplyStat::ProgMismatch { low, high } => {
                accepted(w, AcceptStat::ProgMismatch);
                w.put_u32(low);
                w.put_u32(high);
            }
            ReplyStat::ProcUnavail => accepted(w, AcceptStat::ProcUnavail),
            ReplyStat::GarbageArgs => accepted(w, AcceptStat::GarbageArgs),
            ReplyStat::SystemErr => accepted(w, AcceptStat::SystemErr),
            ReplyStat::RpcMismatch { low, high } => {
                w.put_u32(MSG_DENIED);
                w.put_u32(0); // RPC_MISMATCH
                w.put_u32(low);
                w.put_u32(high);
            }
            ReplyStat::AuthError(stat) => {
                w.put_u32(MSG_DENIED);
                w.put_u32(1); // AUTH_ERROR
                w.put_u32(stat as u32);
            }
        }
    }

    /// Decodes a reply (a client's side): its xid, status, and the results
    /// that follow a SUCCESS.
    pub fn decode_reply(msg: &[u8]) -> XdrResult<(u32, ReplyStat, &[u8])> {
        let mut r = XdrReader::new(msg);
        let xid = r.get_u32()?;
        let mtype = r.get_u32()?;
        if mtype != REPLY {
            return Err(XdrError::BadValue {
                what: "msg_type",
                value: mtype,
            });
        }
        let stat = match r.get_u32()? {
            MSG_ACCEPTED => {
                OpaqueAuth::decode(&mut r)?;
                match r.get_u32()? {
                    0 => ReplyStat::Success,
                    1 => ReplyStat::ProgUnavail,
                    2 => ReplyStat::ProgMismatch {
                        low: r.get_u32()?,
                        high: r.get_u32()?,
                    },
                    3 => ReplyStat::ProcUnavail,
                    4 => ReplyStat::GarbageArgs,
                    5 => ReplyStat::SystemErr,
                    value => {
                        return Err(XdrError::BadValue {
                            what: "accept_stat",
                            value,
                        })
                    }
                }
            }
            MSG_DENIED => match r.get_u32()? {
                0 => ReplyStat::RpcMismatch {
                    low: r.get_u32()?,
                    high: r.get_u32()?,
                },
                1 => {
                    let value = r.get_u32()?;
                    ReplyStat::AuthError(AuthStat::from_u32(value).ok_or(XdrError::BadValue {
                        what: "auth_stat",
                        value,
                    })?)
                }
                value => {
                    return Err(XdrError::BadValue {
                        what: "reject_stat",
                        value,
                    })
                }
            },
            value => {
                return Err(XdrError::BadValue {
                    what: "reply_stat",
                    value,
                })
            }
        };
        Ok((xid, stat, r.rest()))
    }
}
