//! Names of the `trusted.kiln.*` extended attributes: part of the on-disk
//! brick format (see ARCHITECTURE.md, "Brick format"). Clients never see or
//! set anything under `INTERNAL_PREFIX`.

/// Prefix of every internal attribute.
pub const INTERNAL_PREFIX: &str = "trusted.kiln.";
/// The 16-byte gfid of a file or directory.
pub const GFID: &str = "trusted.kiln.gfid";
/// The 16-byte volume id, on a brick's root directory.
pub const VOLUME_ID: &str = "trusted.kiln.volume-id";
/// The brick-format version, on a brick's root directory (one byte).
pub const BRICK_FORMAT: &str = "trusted.kiln.brick-format";
/// This directory's DHT hash ranges on this brick (see `client::distribute::layout`).
pub const DHT_LAYOUT: &str = "trusted.kiln.dht";
/// A DHT link file's target subvolume name.
pub const DHT_LINKTO: &str = "trusted.kiln.dht.linkto";

/// Prefix of replicate's pending changelog counters:
/// `trusted.kiln.afr.<vol>-client-<n>` = three big-endian i64 (data,
/// metadata, entry) that this copy holds against brick `n`.
pub const AFR_PREFIX: &str = "trusted.kiln.afr.";

/// True if the attribute is internal to Kiln (hidden from clients).
pub fn is_internal(name: &str) -> bool {
    name.starts_with(INTERNAL_PREFIX)
}
