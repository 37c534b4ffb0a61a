//! Randomized decoder test on the stable toolchain (the cargo-fuzz target
//! `nlm_args` in `fuzz/` needs nightly): seeded random, truncated and
//! mutated-valid inputs for every NLM v4 and NSM v1 procedure. A decoder
//! may refuse; it must never panic.

use kiln_nlm::types::*;
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

fn valid_lockargs(rng: &mut Rng) -> Vec<u8> {
    let n = (rng.next() % 9) as usize;
    let mut w = XdrWriter::new();
    LockArgs {
        cookie: rng.bytes(n),
        block: rng.next().is_multiple_of(2),
        exclusive: true,
        lock: Nlm4Lock {
            caller_name: b"knfs-guest".to_vec(),
            fh: rng.bytes(32),
            oh: rng.bytes(20),
            svid: rng.next() as i32,
            offset: rng.next(),
            len: rng.next(),
        },
        reclaim: false,
        state: 1,
    }
    .encode(&mut w);
    w.into_bytes()
}

#[test]
fn random_truncated_and_mutated_inputs_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut decoded = 0usize;
    for round in 0..20_000 {
        let input = match round % 3 {
            0 => {
                let n = (rng.next() % 200) as usize;
                rng.bytes(n)
            }
            1 => {
                let v = valid_lockargs(&mut rng);
                let cut = (rng.next() as usize) % (v.len() + 1);
                v[..cut].to_vec()
            }
            _ => {
                let mut v = valid_lockargs(&mut rng);
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % v.len();
                    v[i] = rng.next() as u8;
                }
                v
            }
        };
        for p in 0..26 {
            if let Some(Ok(_)) = decode_nlm(p, &input) {
                decoded += 1;
            }
        }
        for p in 0..8 {
            let _ = decode_nsm(p, &input);
        }
    }
    // Mutated valid LOCK arguments decode often enough to exercise the paths.
    assert!(decoded > 1000, "{decoded}");
    // Huge announced lengths with little input are refused, not allocated.
    let evil = [0xffu8, 0xff, 0xff, 0xf0, 0, 0, 0, 1];
    for p in 0..26 {
        assert!(!matches!(decode_nlm(p, &evil), Some(Ok(NlmCall::Lock(_)))));
    }
}
