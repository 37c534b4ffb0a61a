//! Randomized decoder test on the stable toolchain (the cargo-fuzz targets in
//! `fuzz/` need nightly): seeded random and mutated-valid inputs for every
//! NFSv3 and MOUNT procedure's arguments, RPC headers and file handles. A
//! decoder may refuse; it must never panic or over-read.

use kiln_nfs3::{args, mount_types, FileHandle};
use kiln_portmap::rpc::client::encode_call;
use kiln_portmap::rpc::msg::{CallHeader, Credential, ReplyStat};
use kiln_portmap::XdrWriter;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A valid-looking argument body to mutate: handle, name, numbers.
fn seed_args(rng: &mut Rng) -> Vec<u8> {
    let mut w = XdrWriter::new();
    w.put_opaque(&rng.bytes(32));
    w.put_string(b"some-name");
    for _ in 0..(rng.next() % 12) {
        w.put_u32((rng.next() % 4) as u32);
    }
    let n = (rng.next() % 64) as usize;
    w.put_opaque(&rng.bytes(n));
    w.into_bytes()
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0usize;
    for i in 0..200_000u32 {
        let mut data = if i % 2 == 0 {
            let n = (rng.next() % 200) as usize;
            rng.bytes(n)
        } else {
            seed_args(&mut rng)
        };
        // Flip, cut or extend a little.
        if !data.is_empty() && i % 3 == 0 {
            let at = (rng.next() as usize) % data.len();
            data[at] = rng.next() as u8;
        }
        if i % 5 == 0 {
            let keep = (rng.next() as usize) % (data.len() + 1);
            data.truncate(keep);
        }
        let proc_ = i % 23;
        if args::decode_any(proc_, &data) {
            accepted += 1;
        }
        let _ = mount_types::decode_any(i % 7, &data);
        let _ = FileHandle::decode(&data);
        let msg = encode_call(i, 100003, 3, proc_, None, &data);
        let mut bad = msg.clone();
        let at = (rng.next() as usize) % bad.len();
        bad[at] ^= 1 << (rng.next() % 8);
        for m in [&msg[..], &bad[..], &data[..]] {
            if let Ok((call, rest)) = CallHeader::decode(m) {
                assert!(rest.len() <= m.len());
                let _ = Credential::from_auth(&call.cred);
            }
            let _ = ReplyStat::decode_reply(m);
        }
    }
    assert!(
        accepted > 1000,
        "mutated valid arguments are mostly refused ({accepted})"
    );
}
