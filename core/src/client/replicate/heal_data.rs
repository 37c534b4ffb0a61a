//! Data self-heal of large files by block checksums: each brick hashes its
//! own copy (`Xlator::checksum`, xxh3-128 of 128 KiB blocks, computed in the
//! brick's pool) and only the blocks that differ from the source travel;
//! sinks are cut or extended to the source's size, zero blocks become holes.

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Replicate;
use crate::client::fd::Fd;
use crate::error::{FsError, FsResult};
use crate::gfid::Gfid;
use crate::iatt::{Iatt, SetAttr, SetTime};

/// Files at least this large heal by block checksums (smaller ones are
/// copied whole).
pub(super) const BLOCK_HEAL_MIN: u64 = 1 << 20;
/// Bytes per checksummed block.
const BLOCK: u32 = 128 << 10;
/// Bytes whose checksums one request asks for.
const WINDOW: u64 = 32 << 20;
/// Most bytes one copy step reads and writes (consecutive differing blocks
/// are merged up to this).
const RUN_MAX: u64 = 1 << 20;
/// Copy steps in flight at once.
const IN_FLIGHT: usize = 4;
/// fallocate(2): FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE.
const PUNCH_HOLE: i32 = 0x01 | 0x02;

/// What data heals of one replicate translator did, for tests and
/// `heal statistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataHealStats {
    /// Files healed by block checksums.
    pub block_heals: u64,
    /// Bytes compared by checksum (source size, per sink).
    pub bytes_compared: u64,
    /// Bytes written to sinks (data blocks; holes punched not counted).
    pub bytes_written: u64,
    /// Blocks found different (and copied or punched), over all sinks.
    pub blocks_differing: u64,
}

/// Atomic counters behind `DataHealStats`.
#[derive(Debug, Default)]
pub(super) struct HealCounters {
    block_heals: AtomicU64,
    bytes_compared: AtomicU64,
    bytes_written: AtomicU64,
    blocks_differing: AtomicU64,
}

impl HealCounters {
    fn snapshot(&self) -> DataHealStats {
        DataHealStats {
            block_heals: self.block_heals.load(Ordering::Relaxed),
            bytes_compared: self.bytes_compared.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            blocks_differing: self.blocks_differing.load(Ordering::Relaxed),
        }
    }
}

/// One step of a block heal: `len` bytes at `off` to bring to `sinks`.
struct Run {
    off: u64,
    len: u64,
    sinks: Vec<usize>,
}

impl Replicate {
    /// Counters of the data heals this translator did.
    pub fn data_heal_stats(&self) -> DataHealStats {
        self.heal_counters.snapshot()
    }

    /// Brings the data of `gfid` on `sinks` to that of `source` (whose
    /// attributes are `src`): by block checksums for a large file, else by
    /// a whole copy. Called under the data lock.
    pub(super) async fn sync_data(
        &self,
        gfid: Gfid,
        source: usize,
        src: &Iatt,
        sinks: &[usize],
    ) -> FsResult<()> {
        if src.size < BLOCK_HEAL_MIN {
            return self.copy_data(gfid, source, src, sinks).await;
        }
        let src_fd = self.children[source].open(gfid, libc::O_RDONLY).await?;
        let opened = futures::future::join_all(
            sinks
                .iter()
                .map(|s| self.children[*s].open(gfid, libc::O_RDWR)),
        )
        .await;
        let mut outs: Vec<(usize, Fd)> = Vec::new();
        let mut err = None;
        for (s, r) in sinks.iter().zip(opened) {
            match r {
                Ok(f) => outs.push((*s, f)),
                Err(e) => err = Some(e),
            }
        }
        let r = self.block_heal(&src_fd, source, &outs).await;
        let _ = self.children[source].release(&src_fd).await;
        futures::future::join_all(outs.iter().map(|(s, f)| self.children[*s].release(f))).await;
        r?;
        if let Some(e) = err {
            return Err(e);
        }
        let times = SetAttr {
            atime: Some(SetTime::At(src.atime)),
            mtime: Some(SetTime::At(src.mtime)),
            ..Default::default()
        };
        for (s, _) in &outs {
            self.children[*s].setattr(gfid, &times).await?;
        }
        Ok(())
    }

    /// Compares the blocks of the open source with each open sink and
    /// copies those that differ.
    async fn block_heal(&self, src: &Fd, source: usize, outs: &[(usize, Fd)]) -> FsResult<()> {
        let from = &self.children[source];
        // Sizes first: a sink longer than the source is cut now (its tail
        // is not compared), an empty one needs no checksums at all.
        let (size, _) = from.checksum(src, 0, 0, BLOCK).await?;
        let mut empty = Vec::new();
        for (s, f) in outs {
            let (sink_size, _) = self.children[*s].checksum(f, 0, 0, BLOCK).await?;
            if sink_size > size {
                self.children[*s].ftruncate(f, size).await?;
            }
            empty.push(sink_size == 0);
        }
        self.heal_counters
            .block_heals
            .fetch_add(1, Ordering::Relaxed);
        let zero_full = hash(&vec![0u8; BLOCK as usize]);
        let mut off = 0u64;
        while off < size {
            let len = WINDOW.min(size - off);
            let (_, src_sums) = from.checksum(src, off, len, BLOCK).await?;
            let sink_sums = futures::future::try_join_all(outs.iter().zip(&empty).map(
                |((s, f), empty)| async move {
                    if *empty {
                        return Ok(None);
                    }
                    let (_, sums) = self.children[*s].checksum(f, off, len, BLOCK).await?;
                    Ok::<_, FsError>(Some(sums))
                },
            ))
            .await?;
            // Which sinks need each block; consecutive blocks with the same
            // sinks form one run.
            let mut runs: Vec<Run> = Vec::new();
            for (k, sum) in src_sums.iter().enumerate() {
                let b_off = off + k as u64 * BLOCK as u64;
                let b_len = (BLOCK as u64).min(size - b_off);
                let zero = if b_len == BLOCK as u64 {
                    *sum == zero_full
                } else {
                    *sum == hash(&vec![0u8; b_len as usize])
                };
                let need: Vec<usize> = outs
                    .iter()
                    .zip(&sink_sums)
                    .filter(|(_, sums)| match sums {
                        // A new copy: only data blocks are written.
                        None => !zero,
                        Some(sums) => sums.get(k) != Some(sum),
                    })
                    .map(|((s, _), _)| *s)
                    .collect();
                self.heal_counters
                    .blocks_differing
                    .fetch_add(need.len() as u64, Ordering::Relaxed);
                if need.is_empty() {
                    continue;
                }
                match runs.last_mut() {
                    Some(r) if r.off + r.len == b_off && r.sinks == need && r.len < RUN_MAX => {
                        r.len += b_len
                    }
                    _ => runs.push(Run {
                        off: b_off,
                        len: b_len,
                        sinks: need,
                    }),
                }
            }
            self.heal_counters
                .bytes_compared
                .fetch_add(len * outs.len() as u64, Ordering::Relaxed);
            stream::iter(
                runs.into_iter()
                    .map(|r| self.copy_run(src, source, outs, r)),
            )
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
            off += len;
        }
        for (s, f) in outs {
            self.children[*s].ftruncate(f, size).await?;
        }
        Ok(())
    }

    /// Reads one run from the source and writes it to its sinks (a run of
    /// zeros is punched out instead, so holes stay holes).
    async fn copy_run(
        &self,
        src: &Fd,
        source: usize,
        outs: &[(usize, Fd)],
        r: Run,
    ) -> FsResult<()> {
        let data: Bytes = self.children[source].read(src, r.off, r.len as u32).await?;
        let fds = outs.iter().filter(|(s, _)| r.sinks.contains(s));
        if data.iter().all(|b| *b == 0) {
            for (s, f) in fds {
                let c = &self.children[*s];
                match c.fallocate(f, PUNCH_HOLE, r.off, r.len).await {
                    Ok(()) => {}
                    Err(FsError::NotSupported) | Err(FsError::InvalidArgument) => {
                        c.write(f, r.off, data.clone()).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        let writes = futures::future::join_all(
            fds.map(|(s, f)| self.children[*s].write(f, r.off, data.clone())),
        )
        .await;
        for w in writes {
            w?;
            self.heal_counters
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The checksum of one block as bricks compute it.
fn hash(b: &[u8]) -> [u64; 2] {
    let h = xxhash_rust::xxh3::xxh3_128(b);
    [h as u64, (h >> 64) as u64]
}
