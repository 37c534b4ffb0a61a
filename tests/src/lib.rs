//! The cluster harness: N Kiln servers in network namespaces.
