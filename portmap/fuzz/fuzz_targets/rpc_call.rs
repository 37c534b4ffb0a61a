//! RPC call headers and credentials, as the server decodes every message.
#![no_main]
use kiln_portmap::rpc::msg::{CallHeader, Credential, ReplyStat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((call, args)) = CallHeader::decode(data) {
        let _ = Credential::from_auth(&call.cred);
        assert!(args.len() <= data.len());
    }
    let _ = ReplyStat::decode_reply(data);
});
