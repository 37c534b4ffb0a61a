//! The pool secret (32 random bytes, made at a server's first start and
//! adopted from the prober when it joins a pool) and the challenge-response
//! that proves, both ways, that a peer connection's two ends hold it.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::io;
use std::path::Path;

use crate::identity::{read_kv_file, write_kv_file};

type HmacSha256 = Hmac<Sha256>;

/// Length of nonces in the handshake.
pub(crate) const NONCE_LEN: usize = 32;
const CLIENT_LABEL: &[u8] = b"kiln-peer-auth client v1";
const SERVER_LABEL: &[u8] = b"kiln-peer-auth server v1";
const SECRET_FILE: &str = "pool.secret";
const SECRET_FORMAT: &str = "1";

/// The trusted pool's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PoolSecret([u8; 32]);

impl std::fmt::Debug for PoolSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolSecret(..)")
    }
}

impl PoolSecret {
    /// A fresh random secret.
    pub(crate) fn generate() -> PoolSecret {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        PoolSecret(b)
    }

    /// Hex form (as sent at probe time and stored on disk).
    pub(crate) fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub(crate) fn from_hex(s: &str) -> Option<PoolSecret> {
        let v = hex::decode(s.trim()).ok()?;
        let arr: [u8; 32] = v.try_into().ok()?;
        Some(PoolSecret(arr))
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> HmacSha256 {
        // An HMAC key may have any length: new_from_slice cannot fail here.
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        m.update(label);
        m.update(&(a.len() as u32).to_be_bytes());
        m.update(a);
        m.update(b);
        m
    }

    /// The connecting peer's proof over both nonces.
    pub(crate) fn client_proof(&self, server_nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        self.mac(CLIENT_LABEL, server_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks a connecting peer's proof (constant time).
    pub(crate) fn verify_client(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        self.mac(CLIENT_LABEL, server_nonce, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// The daemon's proof back to the connecting peer.
    pub(crate) fn server_proof(&self, client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
        self.mac(SERVER_LABEL, client_nonce, server_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks the daemon's proof (constant time).
    pub(crate) fn verify_server(
        &self,
        client_nonce: &[u8],
        server_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        self.mac(SERVER_LABEL, client_nonce, server_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// Loads the secret from the state dir, making one at first start.
    pub(crate) fn load_or_create(state_dir: &Path) -> io::Result<PoolSecret> {
        if let Some(kv) = read_kv_file(&state_dir.join(SECRET_FILE))? {
            let fmt = kv.get("format").map(String::as_str).unwrap_or("");
            if fmt != SECRET_FORMAT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{SECRET_FILE}: unknown format {fmt:?}"),
                ));
            }
            return kv
                .get("secret")
                .and_then(|s| PoolSecret::from_hex(s))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{SECRET_FILE}: bad secret"),
                    )
                });
        }
        let s = PoolSecret::generate();
        s.save(state_dir)?;
        Ok(s)
    }

    /// Stores the secret (mode 0600, atomically).
    pub(crate) fn save(&self, state_dir: &Path) -> io::Result<()> {
        write_kv_file(
            &state_dir.join(SECRET_FILE),
            &[
                ("format", SECRET_FORMAT.to_string()),
                ("secret", self.to_hex()),
            ],
            0o600,
        )
    }
}

/// A fresh random nonce.
pub(crate) fn nonce() -> Vec<u8> {
    let mut b = vec![0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_and_nonces() {
        let s = PoolSecret::generate();
        let other = PoolSecret::generate();
        let (sn, cn) = (nonce(), nonce());
        let p = s.client_proof(&sn, &cn);
        assert!(s.verify_client(&sn, &cn, &p));
        assert!(!other.verify_client(&sn, &cn, &p));
        assert!(!s.verify_client(&nonce(), &cn, &p));
        assert!(!s.verify_client(&sn, &cn, &p[..10]));
        // A client proof is not a server proof (no reflection).
        assert!(!s.verify_server(&cn, &sn, &p));
        let q = s.server_proof(&cn, &sn);
        assert!(s.verify_server(&cn, &sn, &q));
    }

    #[test]
    fn secret_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = PoolSecret::load_or_create(dir.path()).unwrap();
        let b = PoolSecret::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        let c = PoolSecret::generate();
        c.save(dir.path()).unwrap();
        assert_eq!(PoolSecret::load_or_create(dir.path()).unwrap(), c);
        assert_eq!(PoolSecret::from_hex(&c.to_hex()), Some(c));
        assert_eq!(PoolSecret::from_hex("abcd"), None);
    }
}
