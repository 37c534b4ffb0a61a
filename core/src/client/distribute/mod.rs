//! DHT: places each file on one subvolume by the hash of its name, using
//! per-directory layouts stored in xattrs; directories live on all subvolumes.

use super::Xlator;
use std::sync::Arc;

/// The distribute translator.
pub struct Distribute {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    children: Vec<Arc<dyn Xlator>>,
}

impl Distribute {
    /// DHT over `children` (in subvolume order).
    pub fn new(name: String, children: Vec<Arc<dyn Xlator>>) -> Distribute {
        Distribute { name, children }
    }
}
