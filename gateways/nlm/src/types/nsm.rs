//! NSM v1 (program 100024, the status monitor's `sm_inter.x`) wire types:
//! SM_NOTIFY's `stat_chge`, SM_MON's `mon`, SM_UNMON's `mon_id`, and the
//! bounded decoder of every procedure's arguments.

use kiln_portmap::{XdrReader, XdrResult, XdrWriter};

use super::LM_MAXSTRLEN;

/// NSM (status monitor) program number.
pub const NSM_PROGRAM: u32 = 100024;
/// NSM version.
pub const NSM_V1: u32 = 1;

/// NSM v1 procedure numbers.
pub mod nsmproc {
    /// SM_NULL.
    pub const NULL: u32 = 0;
    /// SM_STAT.
    pub const STAT: u32 = 1;
    /// SM_MON.
    pub const MON: u32 = 2;
    /// SM_UNMON.
    pub const UNMON: u32 = 3;
    /// SM_UNMON_ALL.
    pub const UNMON_ALL: u32 = 4;
    /// SM_SIMU_CRASH.
    pub const SIMU_CRASH: u32 = 5;
    /// SM_NOTIFY.
    pub const NOTIFY: u32 = 6;
}

/// NSM `stat_chge` (SM_NOTIFY): host `mon_name` is now in state `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatChge {
    /// The host whose state changed.
    pub mon_name: Vec<u8>,
    /// Its new state number (odd: up).
    pub state: i32,
}

impl StatChge {
    /// Decodes the arguments.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<StatChge> {
        Ok(StatChge {
            mon_name: r.get_string(LM_MAXSTRLEN)?.to_vec(),
            state: r.get_i32()?,
        })
    }

    /// Encodes the arguments.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_string(&self.mon_name);
        w.put_i32(self.state);
    }
}

/// NSM `mon` (SM_MON): monitor `mon_name`, calling `my_*` back on a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mon {
    /// The host to monitor.
    pub mon_name: Vec<u8>,
    /// The host to call back (the caller's own name).
    pub my_name: Vec<u8>,
    /// Callback program.
    pub my_prog: u32,
    /// Callback version.
    pub my_vers: u32,
    /// Callback procedure.
    pub my_proc: u32,
    /// Returned in the callback.
    pub priv_: [u8; 16],
}

impl Mon {
    /// Decodes `mon`.
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<Mon> {
        Ok(Mon {
            mon_name: r.get_string(LM_MAXSTRLEN)?.to_vec(),
            my_name: r.get_string(LM_MAXSTRLEN)?.to_vec(),
            my_prog: r.get_u32()?,
            my_vers: r.get_u32()?,
            my_proc: r.get_u32()?,
            priv_: r.get_array::<16>()?,
        })
    }

    /// Encodes `mon`.
    pub fn encode(&self, w: &mut XdrWriter) {
        w.put_string(&self.mon_name);
        w.put_string(&self.my_name);
        w.put_u32(self.my_prog);
        w.put_u32(self.my_vers);
        w.put_u32(self.my_proc);
        w.put_fixed(&self.priv_);
    }
}

/// NSM `mon_id` (SM_UNMON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonId {
    /// The monitored host.
    pub mon_name: Vec<u8>,
    /// The caller.
    pub my_name: Vec<u8>,
}

impl MonId {
    /// Decodes `mon_id` (the `my_id` callback numbers are read and dropped).
    pub fn decode(r: &mut XdrReader<'_>) -> XdrResult<MonId> {
        let mon_name = r.get_string(LM_MAXSTRLEN)?.to_vec();
        let my_name = r.get_string(LM_MAXSTRLEN)?.to_vec();
        r.get_u32()?;
        r.get_u32()?;
        r.get_u32()?;
        Ok(MonId { mon_name, my_name })
    }
}

/// Arguments of one NSM v1 call, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsmCall {
    /// SM_NULL, SM_SIMU_CRASH.
    Void,
    /// SM_STAT: `sm_name`.
    Stat(Vec<u8>),
    /// SM_MON.
    Mon(Mon),
    /// SM_UNMON.
    Unmon(MonId),
    /// SM_UNMON_ALL: `my_id` (its name).
    UnmonAll(Vec<u8>),
    /// SM_NOTIFY.
    Notify(StatChge),
}

/// Decodes the arguments of NSM procedure `proc_`; `None` for an unknown one.
pub fn decode_nsm(proc_: u32, args: &[u8]) -> Option<XdrResult<NsmCall>> {
    use nsmproc::*;
    let mut r = XdrReader::new(args);
    let call = match proc_ {
        NULL | SIMU_CRASH => Ok(NsmCall::Void),
        STAT => r
            .get_string(LM_MAXSTRLEN)
            .map(|s| NsmCall::Stat(s.to_vec())),
        MON => Mon::decode(&mut r).map(NsmCall::Mon),
        UNMON => MonId::decode(&mut r).map(NsmCall::Unmon),
        UNMON_ALL => (|| {
            let name = r.get_string(LM_MAXSTRLEN)?.to_vec();
            r.get_u32()?;
            r.get_u32()?;
            r.get_u32()?;
            Ok(NsmCall::UnmonAll(name))
        })(),
        NOTIFY => StatChge::decode(&mut r).map(NsmCall::Notify),
        _ => return None,
    };
    Some(call.and_then(|c| r.finish().map(|_| c)))
}
