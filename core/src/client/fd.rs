//! `Fd`: an open file or directory as the translator stack sees it. Each
//! translator keeps its own state for the fd (e.g. DHT: which subvolume and
//! that child's `Fd`; protocol: the brick's fd number) in `state`.

use crate::gfid::Gfid;
use std::any::Any;
use std::sync::Arc;

/// An open file or directory. Cheap to clone.
#[derive(Clone)]
pub struct Fd {
    /// The open inode.
    pub gfid: Gfid,
    /// open(2) flags it was opened with.
    pub flags: i32,
    state: Arc<dyn Any + Send + Sync>,
}

impl Fd {
    /// Wraps one translator's state for an open file.
    pub fn new<T: Any + Send + Sync>(gfid: Gfid, flags: i32, state: T) -> Fd {
        Fd {
            gfid,
            flags,
            state: Arc::new(state),
        }
    }

    /// The state of the translator that made this fd, if it is of type `T`.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.state.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Fd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fd({}, flags={:#o})", self.gfid, self.flags)
    }
}
