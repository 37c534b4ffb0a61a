//! NLM v4 and NSM v1 procedure arguments: the first byte picks the
//! program (high bit) and procedure.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((p, args)) = data.split_first() {
        if p & 0x80 == 0 {
            let _ = kiln_nlm::types::decode_nlm(u32::from(*p % 26), args);
        } else {
            let _ = kiln_nlm::types::decode_nsm(u32::from(*p % 8), args);
        }
    }
});
