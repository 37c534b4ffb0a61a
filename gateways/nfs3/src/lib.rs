//! kiln-nfs3
