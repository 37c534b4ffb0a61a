//! MOUNT procedure arguments and file handles.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((p, args)) = data.split_first() {
        let _ = kiln_nfs3::mount_types::decode_any(u32::from(*p % 7), args);
    }
    let _ = kiln_nfs3::FileHandle::decode(data);
});
