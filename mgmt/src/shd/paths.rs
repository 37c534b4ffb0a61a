//! Names pending gfids by path for `heal info`, reading the local brick
//! directly: a directory's handle is a symlink chain to its path; a file's
//! handle is a hard link, found by its inode number in a bounded walk of
//! the brick. What cannot be named is shown as `<gfid:...>`.

use kiln_core::Gfid;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most entries one walk of a brick looks at.
const WALK_LIMIT: usize = 200_000;

/// Paths (from the volume root) of `gfids` on the brick at `brick`, in
/// order; `<gfid:...>` where unknown. Blocking: call from a blocking task.
pub(crate) fn name_gfids(brick: &Path, gfids: &[Gfid]) -> Vec<String> {
    let root = match std::fs::canonicalize(brick) {
        Ok(r) => r,
        Err(_) => return gfids.iter().map(unnamed).collect(),
    };
    let mut files: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out: Vec<Option<String>> = vec![None; gfids.len()];
    for (i, g) in gfids.iter().enumerate() {
        if *g == Gfid::ROOT {
            out[i] = Some("/".into());
            continue;
        }
        let handle = root.join(".kiln").join(g.handle_rel_path());
        let Ok(meta) = std::fs::symlink_metadata(&handle) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&handle) {
                out[i] = relative(&root, &real);
            }
        } else {
            files.insert((meta.dev(), meta.ino()), i);
        }
    }
    if !files.is_empty() {
        walk(&root, &root, &mut files, &mut out, &mut 0);
    }
    out.into_iter()
        .zip(gfids)
        .map(|(p, g)| p.unwrap_or_else(|| unnamed(g)))
        .collect()
}

fn unnamed(g: &Gfid) -> String {
    format!("<gfid:{g}>")
}

fn relative(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

fn walk(
    root: &Path,
    dir: &PathBuf,
    want: &mut HashMap<(u64, u64), usize>,
    out: &mut [Option<String>],
    seen: &mut usize,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if want.is_empty() || *seen >= WALK_LIMIT {
            return;
        }
        *seen += 1;
        let p = e.path();
        if dir == root && e.file_name() == ".kiln" {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            walk(root, &p, want, out, seen);
        } else if let Some(i) = want.remove(&(meta.dev(), meta.ino())) {
            out[i] = relative(root, &p);
        }
    }
}
