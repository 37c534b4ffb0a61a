//! NFSv3 procedure arguments: the first byte picks the procedure.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((p, args)) = data.split_first() {
        let _ = kiln_nfs3::args::decode_any(u32::from(*p % 23), args);
    }
});
