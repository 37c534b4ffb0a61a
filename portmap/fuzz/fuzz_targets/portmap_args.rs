//! Portmapper arguments and results: mappings and pmaplists.
#![no_main]
use kiln_portmap::pmap::{decode_pmaplist, Mapping};
use kiln_portmap::XdrReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Mapping::decode(&mut XdrReader::new(data));
    let _ = decode_pmaplist(&mut XdrReader::new(data), 1024);
});
