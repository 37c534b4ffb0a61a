//! Blocking file helpers of the Raft store: versioned JSON documents written
//! atomically (temp file, fsync, rename, fsync of the directory). Callers run
//! them on tokio's blocking pool, never on the reactor.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Format version of every JSON document of the store (meta, state,
/// snapshot). Bump it, and keep a reader for the old one, on any change.
pub const FORMAT_VERSION: u32 = 1;

/// The envelope every document is written in.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    /// Which document this is ("kiln-raft-meta", ...).
    kind: String,
    /// `FORMAT_VERSION` when written.
    version: u32,
    /// The document.
    body: T,
}

/// Encodes `body` as a versioned document (also the bytes of a snapshot
/// sent to a peer).
pub fn encode_doc<T: Serialize>(kind: &str, body: &T) -> io::Result<Vec<u8>> {
    let doc = Versioned {
        kind: kind.to_string(),
        version: FORMAT_VERSION,
        body,
    };
    serde_json::to_vec(&doc).map_err(io::Error::other)
}

/// Decodes a document made by `encode_doc`, checking kind and version;
/// `what` names its origin in errors.
pub fn decode_doc<T: DeserializeOwned>(bytes: &[u8], kind: &str, what: &str) -> io::Result<T> {
    let doc: Versioned<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| bad_data(format!("{what}: {e}")))?;
    if doc.kind != kind {
        return Err(bad_data(format!(
            "{what}: holds a {} document, expected {kind}",
            doc.kind
        )));
    }
    if doc.version != FORMAT_VERSION {
        return Err(bad_data(format!(
            "{what}: format version {} is not supported (this build reads {FORMAT_VERSION})",
            doc.version
        )));
    }
    serde_json::from_value(doc.body).map_err(|e| bad_data(format!("{what}: {e}")))
}

/// Writes `body` to `dir/name` so that after a crash the file holds either
/// the old or the new document, never a mix.
pub fn write_doc<T: Serialize>(dir: &Path, name: &str, kind: &str, body: &T) -> io::Result<()> {
    write_atomic(dir, name, &encode_doc(kind, body)?)
}

/// Reads `dir/name` written by `write_doc`; `None` if it does not exist.
pub fn read_doc<T: DeserializeOwned>(dir: &Path, name: &str, kind: &str) -> io::Result<Option<T>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => decode_doc(&bytes, kind, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An `InvalidData` error with a message.
pub fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_round_trip_and_version_check() {
        let dir = tempfile::tempdir().unwrap();
        write_doc(dir.path(), "a.json", "kiln-test", &vec![1u32, 2, 3]).unwrap();
        let back: Option<Vec<u32>> = read_doc(dir.path(), "a.json", "kiln-test").unwrap();
        assert_eq!(back, Some(vec![1, 2, 3]));
        assert!(read_doc::<Vec<u32>>(dir.path(), "a.json", "other").is_err());
        assert_eq!(
            read_doc::<Vec<u32>>(dir.path(), "none.json", "kiln-test").unwrap(),
            None
        );
        fs::write(
            dir.path().join("b.json"),
            br#"{"kind":"kiln-test","version":99,"body":[]}"#,
        )
        .unwrap();
        let err = read_doc::<Vec<u32>>(dir.path(), "b.json", "kiln-test").unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
