//! NLM v4 (program 100021) wire types, as the X/Open XNFS specification
//! defines them (NSM v1's, from `sm_inter.x`, in `nsm`):
//! bounded decoders for every procedure's arguments and encoders for the
//! results. Decoding never panics and never allocates past the field caps.

use kiln_portmap::{XdrError, XdrReader, XdrResult, XdrWriter};

mod nsm;

pub use nsm::*;

/// NLM program number.
pub const NLM_PROGRAM: u32 = 100021;
/// The NLM version served (NLM v4, 64-bit offsets, for NFSv3).
pub const NLM_V4: u32 = 4;
/// `LM_MAXSTRLEN`: caller names and NSM host names.
pub const LM_MAXSTRLEN: usize = 1024;
/// `MAXNETOBJ_SZ`: cookies, file handles, owner handles.
pub const MAXNETOBJ_SZ: usize = 1024;

/// NLM v4 procedure numbers.
pub mod proc4 {
    /// NLM4_NULL.
    pub const NULL: u32 = 0;
    /// NLM4_TEST.
    pub const TEST: u32 = 1;
    /// NLM4_LOCK.
    pub const LOCK: u32 = 2;
    /// NLM4_CANCEL.
    pub const CANCEL: u32 = 3;
    /// NLM4_UNLOCK.
    pub const UNLOCK: u32 = 4;
    /// NLM4_GRANTED (server to client).
    pub const GRANTED: u32 = 5;
    /// NLM4_TEST_MSG.
    pub const TEST_MSG: u32 = 6;
    /// NLM4_LOCK_MSG.
    pub const LOCK_MSG: u32 = 7;
    /// NLM4_CANCEL_MSG.
    pub const CANCEL_MSG: u32 = 8;
    /// NLM4_UNLOCK_MSG.
    pub const UNLOCK_MSG: u32 = 9;
    /// NLM4_GRANTED_MSG (server to client).
    pub const GRANTED_MSG: u32 = 10;
    /// NLM4_TEST_RES.
    pub const TEST_RES: u32 = 11;
    /// NLM4_LOCK_RES.
    pub const LOCK_RES: u32 = 12;
    /// NLM4_CANCEL_RES.
    pub const CANCEL_RES: u32 = 13;
    /// NLM4_UNLOCK_RES.
    pub const UNLOCK_RES: u32 = 14;
    /// NLM4_GRANTED_RES (client to server).
    pub const GRANTED_RES: u32 = 15;
    /// NLM4_SHARE.
    pub const SHARE: u32 = 20;
    /// NLM4_UNSHARE.
    pub const UNSHARE: u32 = 21;
    /// NLM4_NM_LOCK (non-monitored lock).
    pub const NM_LOCK: u32 = 22;
    /// NLM4_FREE_ALL.
    pub const FREE_ALL: u32 = 23;

    /// An asynchronous `_MSG` procedure as (the synchronous procedure it
    /// runs, the `_RES` procedure its result goes back in). GRANTED_MSG is
    /// not one a server runs: nothing here waits for a grant.
    pub fn msg_form(proc_: u32) -> Option<(u32, u32)> {
        match proc_ {
            TEST_MSG => Some((TEST, TEST_RES)),
            LOCK_MSG => Some((LOCK, LOCK_RES)),
            CANCEL_MSG => Some((CANCEL, CANCEL_RES)),
            UNLOCK_MSG => Some((UNLOCK, UNLOCK_RES)),
            _ => None,
        }
    }
}

/// `nlm4_stats`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nlm4Stat {
    /// The lock was granted (or the call succeeded).
    Granted = 0,
    /// Refused: a conflicting lock is held.
    Denied = 1,
    /// Refused: out of resources.
    DeniedNolocks = 2,
    /// A blocking lock is queued; a GRANTED callback follows.
    Blocked = 3,
    /// Refused: the server is in its grace period (reclaims only).
    DeniedGracePeriod = 4,
    /// Refused: granting would deadlock.
    Deadlck = 5,
    /// Read-only file system.
    Rofs = 6,
    /// Stale file handle.
    StaleFh = 7,
    /// Offset or length too big.
    Fbig = 8,
    /// Any other failure.
    Failed = 9,
}

impl Nlm4Stat {
    /// Decodes a status.
    pub fn from_u32(v: u32) -> XdrResult<Nlm4Stat> {
        use Nlm4Stat::*;
        Ok(match v {
            0 => Granted,
            1 => Denied,
            2 => DeniedNolocks,
            3 => Blocked,
            4 => DeniedGracePeriod,
            5 => Deadlck,
            6 => Rofs,
            7 => StaleFh,
            8 => Fbig,
            9 => Failed,
            value => {
                return Err(XdrError::BadValue {
                    what: "nlm4_stats",
                    value,
                })
            }
        })
    }
}

/// `nlm4_lock`: who locks which range of which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nlm4Lock {
    /// The client's host name (its NSM name).
    pub caller_name: Vec<u8>,
    /// The NFS file handle.
    pub fh: Vec<u8>,
    /// The owner handle (opaque, per client process/lock owner).
    pub oh: Vec<u8>,
    /// The owner's id within the client (a pid).
    pub svid: i32,
    /// First byte.
    pub offset: u64,
    /// Length; 0 = to end of file.
    pub len: u64,
}

impl Nlm4Lock {
    /// Decodes an `nlm4_lock`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Nlm4Lock> {
        Ok(Nlm4Lock {
            caller_name: r.get_string(LM_MAXSTRLEN)?.to_vec(),
            fh: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            oh: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            svid: r.get_i32()?,
            offset: r.get_u64()?,
            len: r.get_u64()?,
        })
    }

    /// Encodes an `nlm4_lock`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_string(&self.caller_name);
        w.put_opaque(&self.fh);
        w.put_opaque(&self.oh);
        w.put_i32(self.svid);
        w.put_u64(self.offset);
        w.put_u64(self.len);
    }
}

/// `nlm4_holder`: the conflicting lock TEST reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nlm4Holder {
    /// Write lock.
    pub exclusive: bool,
    /// The holder's id.
    pub svid: i32,
    /// The holder's owner handle.
    pub oh: Vec<u8>,
    /// First byte.
    pub offset: u64,
    /// Length; 0 = to end of file.
    pub len: u64,
}

/// `nlm4_testargs` (TEST, TEST_MSG, GRANTED, GRANTED_MSG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestArgs {
    /// Echoed in the result.
    pub cookie: Vec<u8>,
    /// Write lock.
    pub exclusive: bool,
    /// The lock.
    pub lock: Nlm4Lock,
}

impl TestArgs {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<TestArgs> {
        Ok(TestArgs {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            exclusive: r.get_bool()?,
            lock: Nlm4Lock::decode(r)?,
        })
    }

    /// Encodes the arguments (a GRANTED callback).
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_bool(self.exclusive);
        self.lock.encode(w);
    }
}

/// `nlm4_lockargs` (LOCK, LOCK_MSG, NM_LOCK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockArgs {
    /// Echoed in the result.
    pub cookie: Vec<u8>,
    /// Wait for the lock (BLOCKED, then a GRANTED callback).
    pub block: bool,
    /// Write lock.
    pub exclusive: bool,
    /// The lock.
    pub lock: Nlm4Lock,
    /// Reclaiming a lock held before the server restarted.
    pub reclaim: bool,
    /// The client's NSM state number.
    pub state: i32,
}

impl LockArgs {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<LockArgs> {
        Ok(LockArgs {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            block: r.get_bool()?,
            exclusive: r.get_bool()?,
            lock: Nlm4Lock::decode(r)?,
            reclaim: r.get_bool()?,
            state: r.get_i32()?,
        })
    }

    /// Encodes the arguments (a client's side, for tests).
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_bool(self.block);
        w.put_bool(self.exclusive);
        self.lock.encode(w);
        w.put_bool(self.reclaim);
        w.put_i32(self.state);
    }
}

/// `nlm4_cancargs` (CANCEL, CANCEL_MSG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancArgs {
    /// Echoed in the result.
    pub cookie: Vec<u8>,
    /// The cancelled request was blocking.
    pub block: bool,
    /// Write lock.
    pub exclusive: bool,
    /// The lock being cancelled.
    pub lock: Nlm4Lock,
}

impl CancArgs {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<CancArgs> {
        Ok(CancArgs {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            block: r.get_bool()?,
            exclusive: r.get_bool()?,
            lock: Nlm4Lock::decode(r)?,
        })
    }

    /// Encodes the arguments.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_bool(self.block);
        w.put_bool(self.exclusive);
        self.lock.encode(w);
    }
}

/// `nlm4_unlockargs` (UNLOCK, UNLOCK_MSG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockArgs {
    /// Echoed in the result.
    pub cookie: Vec<u8>,
    /// The range to release.
    pub lock: Nlm4Lock,
}

impl UnlockArgs {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<UnlockArgs> {
        Ok(UnlockArgs {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            lock: Nlm4Lock::decode(r)?,
        })
    }

    /// Encodes the arguments.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        self.lock.encode(w);
    }
}

/// `nlm4_res`: a cookie and a status (LOCK, CANCEL, UNLOCK, GRANTED and their _RES).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Res {
    /// The call's cookie.
    pub cookie: Vec<u8>,
    /// The outcome.
    pub stat: Nlm4Stat,
}

impl Res {
    /// Decodes a result (GRANTED_RES, or a client reading a reply).
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Res> {
        Ok(Res {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            stat: Nlm4Stat::from_u32(r.get_u32()?)?,
        })
    }

    /// Encodes the result.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_u32(self.stat as u32);
    }
}

/// `nlm4_testres`: TEST's result, with the holder when DENIED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRes {
    /// The call's cookie.
    pub cookie: Vec<u8>,
    /// The outcome.
    pub stat: Nlm4Stat,
    /// The conflicting lock (with `Denied`).
    pub holder: Option<Nlm4Holder>,
}

impl TestRes {
    /// Encodes the result.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        match (&self.holder, self.stat) {
            (Some(h), Nlm4Stat::Denied) => {
                w.put_u32(Nlm4Stat::Denied as u32);
                w.put_bool(h.exclusive);
                w.put_i32(h.svid);
                w.put_opaque(&h.oh);
                w.put_u64(h.offset);
                w.put_u64(h.len);
            }
            (_, Nlm4Stat::Denied) => {
                // A DENIED must carry a holder: an anonymous whole-file one.
                w.put_u32(Nlm4Stat::Denied as u32);
                w.put_bool(true);
                w.put_i32(0);
                w.put_opaque(&[]);
                w.put_u64(0);
                w.put_u64(0);
            }
            (_, stat) => w.put_u32(stat as u32),
        }
    }

    /// Decodes a result (a client's side, for tests).
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<TestRes> {
        let cookie = r.get_opaque(MAXNETOBJ_SZ)?.to_vec();
        let stat = Nlm4Stat::from_u32(r.get_u32()?)?;
        let holder = if stat == Nlm4Stat::Denied {
            Some(Nlm4Holder {
                exclusive: r.get_bool()?,
                svid: r.get_i32()?,
                oh: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
                offset: r.get_u64()?,
                len: r.get_u64()?,
            })
        } else {
            None
        };
        Ok(TestRes {
            cookie,
            stat,
            holder,
        })
    }
}

/// `nlm4_share`: a DOS share reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nlm4Share {
    /// The client's host name.
    pub caller_name: Vec<u8>,
    /// The NFS file handle.
    pub fh: Vec<u8>,
    /// The owner handle.
    pub oh: Vec<u8>,
    /// `fsh4_mode`: what others may not do (bit 0 read, bit 1 write).
    pub mode: u32,
    /// `fsh4_access`: what this opener does (bit 0 read, bit 1 write).
    pub access: u32,
}

/// `nlm4_shareargs` (SHARE, UNSHARE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareArgs {
    /// Echoed in the result.
    pub cookie: Vec<u8>,
    /// The reservation.
    pub share: Nlm4Share,
    /// Reclaiming after a server restart.
    pub reclaim: bool,
}

impl ShareArgs {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<ShareArgs> {
        let cookie = r.get_opaque(MAXNETOBJ_SZ)?.to_vec();
        let caller_name = r.get_string(LM_MAXSTRLEN)?.to_vec();
        let fh = r.get_opaque(MAXNETOBJ_SZ)?.to_vec();
        let oh = r.get_opaque(MAXNETOBJ_SZ)?.to_vec();
        let mode = r.get_u32()?;
        if mode > 3 {
            return Err(XdrError::BadValue {
                what: "fsh4_mode",
                value: mode,
            });
        }
        let access = r.get_u32()?;
        if access > 3 {
            return Err(XdrError::BadValue {
                what: "fsh4_access",
                value: access,
            });
        }
        Ok(ShareArgs {
            cookie,
            share: Nlm4Share {
                caller_name,
                fh,
                oh,
                mode,
                access,
            },
            reclaim: r.get_bool()?,
        })
    }

    /// Encodes the arguments.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_string(&self.share.caller_name);
        w.put_opaque(&self.share.fh);
        w.put_opaque(&self.share.oh);
        w.put_u32(self.share.mode);
        w.put_u32(self.share.access);
        w.put_bool(self.reclaim);
    }
}

/// `nlm4_shareres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRes {
    /// The call's cookie.
    pub cookie: Vec<u8>,
    /// The outcome.
    pub stat: Nlm4Stat,
    /// Unused sequence number (0).
    pub sequence: i32,
}

impl ShareRes {
    /// Encodes the result.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_opaque(&self.cookie);
        w.put_u32(self.stat as u32);
        w.put_i32(self.sequence);
    }

    /// Decodes the result.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<ShareRes> {
        Ok(ShareRes {
            cookie: r.get_opaque(MAXNETOBJ_SZ)?.to_vec(),
            stat: Nlm4Stat::from_u32(r.get_u32()?)?,
            sequence: r.get_i32()?,
        })
    }
}

/// `nlm4_notify` (FREE_ALL): a client host rebooted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The client's host name.
    pub name: Vec<u8>,
    /// Its new NSM state.
    pub state: i32,
}

impl Notify {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Notify> {
        Ok(Notify {
            name: r.get_string(LM_MAXSTRLEN)?.to_vec(),
            state: r.get_i32()?,
        })
    }

    /// Encodes the arguments.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_string(&self.name);
        w.put_i32(self.state);
    }
}

/// Arguments of one NLM v4 call, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlmCall {
    /// NULL.
    Null,
    /// TEST or TEST_MSG, GRANTED or GRANTED_MSG.
    Test(TestArgs),
    /// LOCK, LOCK_MSG or NM_LOCK.
    Lock(LockArgs),
    /// CANCEL or CANCEL_MSG.
    Cancel(CancArgs),
    /// UNLOCK or UNLOCK_MSG.
    Unlock(UnlockArgs),
    /// TEST_RES.
    TestRes(TestRes),
    /// LOCK_RES, CANCEL_RES, UNLOCK_RES, GRANTED_RES.
    Res(Res),
    /// SHARE or UNSHARE.
    Share(ShareArgs),
    /// FREE_ALL.
    FreeAll(Notify),
}

/// Decodes the arguments of NLM v4 procedure `proc_`; every byte must be
/// used. `None` for a procedure number NLM v4 does not have.
pub fn decode_nlm(proc_: u32, args: &[u8]) -> Option<XdrResult<NlmCall>> {
    use proc4::*;
    let mut r = XdrReader::new(args);
    let call = match proc_ {
        NULL => Ok(NlmCall::Null),
        TEST | TEST_MSG | GRANTED | GRANTED_MSG => TestArgs::decode(&mut r).map(NlmCall::Test),
        LOCK | LOCK_MSG | NM_LOCK => LockArgs::decode(&mut r).map(NlmCall::Lock),
        CANCEL | CANCEL_MSG => CancArgs::decode(&mut r).map(NlmCall::Cancel),
        UNLOCK | UNLOCK_MSG => UnlockArgs::decode(&mut r).map(NlmCall::Unlock),
        TEST_RES => TestRes::decode(&mut r).map(NlmCall::TestRes),
        LOCK_RES | CANCEL_RES | UNLOCK_RES | GRANTED_RES => Res::decode(&mut r).map(NlmCall::Res),
        SHARE | UNSHARE => ShareArgs::decode(&mut r).map(NlmCall::Share),
        FREE_ALL => Notify::decode(&mut r).map(NlmCall::FreeAll),
        _ => return None,
    };
    Some(call.and_then(|c| r.finish().map(|_| c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Nlm4Lock {
        Nlm4Lock {
            caller_name: b"knfs-guest".to_vec(),
            fh: vec![7; 32],
            oh: b"1234@knfs-guest".to_vec(),
            svid: 42,
            offset: 10,
            len: 0,
        }
    }

    #[test]
    fn msg_forms_map_to_their_procedure_and_res() {
        use proc4::*;
        assert_eq!(msg_form(TEST_MSG), Some((TEST, TEST_RES)));
        assert_eq!(msg_form(LOCK_MSG), Some((LOCK, LOCK_RES)));
        assert_eq!(msg_form(CANCEL_MSG), Some((CANCEL, CANCEL_RES)));
        assert_eq!(msg_form(UNLOCK_MSG), Some((UNLOCK, UNLOCK_RES)));
        for p in [
            NULL,
            TEST,
            LOCK,
            GRANTED,
            GRANTED_MSG,
            LOCK_RES,
            SHARE,
            FREE_ALL,
        ] {
            assert_eq!(msg_form(p), None, "{p}");
        }
    }

    #[test]
    fn lockargs_round_trip_and_truncation() {
        let a = LockArgs {
            cookie: vec![1, 2, 3],
            block: true,
            exclusive: true,
            lock: lock(),
            reclaim: false,
            state: 3,
        };
        let mut w = XdrWriter::new();
        a.encode(&mut w);
        let b = w.into_bytes();
        assert_eq!(
            decode_nlm(proc4::LOCK, &b).unwrap().unwrap(),
            NlmCall::Lock(a)
        );
        for n in 0..b.len() {
            assert!(decode_nlm(proc4::LOCK, &b[..n]).unwrap().is_err(), "{n}");
        }
        let mut long = b.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(decode_nlm(proc4::LOCK, &long).unwrap().is_err());
        assert!(decode_nlm(16, &b).is_none());
    }

    #[test]
    fn oversize_names_refused() {
        let mut w = XdrWriter::new();
        w.put_opaque(&[]);
        w.put_bool(false);
        w.put_string(&vec![b'a'; LM_MAXSTRLEN + 1]);
        assert!(matches!(
            decode_nlm(proc4::TEST, w.as_bytes()).unwrap(),
            Err(XdrError::TooLong { .. })
        ));
        let mut w = XdrWriter::new();
        w.put_u32(u32::MAX);
        assert!(decode_nlm(proc4::UNLOCK, w.as_bytes()).unwrap().is_err());
    }

    #[test]
    fn testres_denied_carries_holder() {
        let res = TestRes {
            cookie: vec![9],
            stat: Nlm4Stat::Denied,
            holder: Some(Nlm4Holder {
                exclusive: true,
                svid: 7,
                oh: vec![1; 8],
                offset: 5,
                len: 6,
            }),
        };
        let mut w = XdrWriter::new();
        res.encode(&mut w);
        let back = TestRes::decode(&mut XdrReader::new(w.as_bytes())).unwrap();
        assert_eq!(back, res);
    }

    #[test]
    fn nsm_notify_and_mon() {
        let n = StatChge {
            mon_name: b"knfs-guest".to_vec(),
            state: 5,
        };
        let mut w = XdrWriter::new();
        n.encode(&mut w);
        assert_eq!(
            decode_nsm(nsmproc::NOTIFY, w.as_bytes()).unwrap().unwrap(),
            NsmCall::Notify(n)
        );
        let m = Mon {
            mon_name: b"a".to_vec(),
            my_name: b"b".to_vec(),
            my_prog: NLM_PROGRAM,
            my_vers: 4,
            my_proc: 16,
            priv_: [3; 16],
        };
        let mut w = XdrWriter::new();
        m.encode(&mut w);
        assert_eq!(
            decode_nsm(nsmproc::MON, w.as_bytes()).unwrap().unwrap(),
            NsmCall::Mon(m)
        );
        assert!(decode_nsm(nsmproc::MON, &w.as_bytes()[..20])
            .unwrap()
            .is_err());
    }
}
