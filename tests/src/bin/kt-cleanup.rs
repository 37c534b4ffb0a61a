//! `kt-cleanup`: removes what crashed harness runs left behind (namespaces,
//! `/etc/netns` entries, scratch dirs of processes that no longer exist).
//! `scripts/test.sh` runs it before and after the suite.

fn main() {
    for name in kiln_tests::cleanup_stale() {
        println!("kt-cleanup: removed {name}");
    }
}
