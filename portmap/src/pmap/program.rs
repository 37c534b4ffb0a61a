//! The portmapper program's procedures over its mapping table: NULL, SET,
//! UNSET, GETPORT, DUMP; CALLIT is refused (PROC_UNAVAIL: an unauthenticated
//! forwarder is an amplification and spoofing tool). SET and UNSET are
//! accepted from loopback callers only, as rpcbind does for remote hosts.

use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::BTreeMap;

use super::types::*;
use crate::rpc::{CallContext, ProcError, RpcProgram};
use crate::xdr::{XdrReader, XdrWriter};

/// Most mappings the table holds (SET beyond answers false).
pub const MAX_MAPPINGS: usize = 1024;

/// The portmapper program with its table.
#[derive(Default)]
pub struct PortmapProgram {
    table: Mutex<BTreeMap<(u32, u32, u32), u32>>,
}

impl PortmapProgram {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a mapping (the local side's own registration).
    pub fn insert(&self, m: Mapping) {
        self.table.lock().insert((m.prog, m.vers, m.prot), m.port);
    }

    /// Removes every protocol of `prog`/`vers`; true if one was there.
    pub fn remove(&self, prog: u32, vers: u32) -> bool {
        let mut t = self.table.lock();
        let before = t.len();
        t.retain(|(p, v, _), _| !(*p == prog && *v == vers));
        t.len() != before
    }

    /// The port of `prog`/`vers`/`prot`, or 0.
    pub fn getport(&self, prog: u32, vers: u32, prot: u32) -> u32 {
        self.table
            .lock()
            .get(&(prog, vers, prot))
            .copied()
            .unwrap_or(0)
    }

    /// Every mapping, sorted.
    pub fn dump(&self) -> Vec<Mapping> {
        self.table
            .lock()
            .iter()
            .map(|(&(prog, vers, prot), &port)| Mapping {
                prog,
                vers,
                prot,
                port,
            })
            .collect()
    }

    fn set(&self, m: Mapping) -> bool {
        let mut t = self.table.lock();
        if t.len() >= MAX_MAPPINGS || t.contains_key(&(m.prog, m.vers, m.prot)) {
            return false;
        }
        t.insert((m.prog, m.vers, m.prot), m.port);
        true
    }
}

#[async_trait]
impl RpcProgram for PortmapProgram {
    fn program(&self) -> u32 {
        PMAP_PROG
    }

    fn versions(&self) -> &[u32] {
        &[PMAP_VERS]
    }

    fn name(&self) -> &'static str {
        "portmap"
    }

    async fn call(
        &self,
        ctx: &CallContext,
        _vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, ProcError> {
        let mut r = XdrReader::new(args);
        let mut w = XdrWriter::with_capacity(64);
        let local_caller = ctx.peer.ip().is_loopback();
        match proc_ {
            PMAPPROC_NULL => {}
            PMAPPROC_SET => {
                let m = Mapping::decode(&mut r)?;
                let ok = local_caller && self.set(m);
                tracing::info!(peer = %ctx.peer, prog = m.prog, vers = m.vers, prot = m.prot, port = m.port, ok, "portmap: SET");
                w.put_bool(ok);
            }
            PMAPPROC_UNSET => {
                let m = Mapping::decode(&mut r)?;
                let ok = local_caller && self.remove(m.prog, m.vers);
                w.put_bool(ok);
            }
            PMAPPROC_GETPORT => {
                let m = Mapping::decode(&mut r)?;
                w.put_u32(self.getport(m.prog, m.vers, m.prot));
            }
            PMAPPROC_DUMP => encode_pmaplist(&self.dump(), &mut w),
            PMAPPROC_CALLIT => return Err(ProcError::ProcUnavail),
            _ => return Err(ProcError::ProcUnavail),
        }
        Ok(w.into_bytes())
    }
}
