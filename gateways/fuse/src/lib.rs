//! kiln-fuse: the FUSE client (`kiln mount`, `mount.kiln`).
