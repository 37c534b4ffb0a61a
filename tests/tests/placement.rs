//! Where DHT puts things, checked on the bricks themselves: each regular
//! file on exactly one brick, directories on all bricks, and a link file
//! (empty, mode 01000, `trusted.kiln.dht.linkto`) at the new hashed brick
//! after a rename that moves the name to another brick.

use kiln_core::xattr_names;
use kiln_core::Gfid;
use kiln_tests::brick::{self, Kind};
use kiln_tests::{check_prerequisites, Cluster};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn content(name: &str) -> Vec<u8> {
    format!("data of {name}\n")
        .repeat(1 + name.len() % 7)
        .into_bytes()
}

/// The gfid of a brick path, which must be 16 bytes.
fn gfid_of(path: &Path) -> Gfid {
    let v = brick::get_xattr(path, xattr_names::GFID)
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no gfid xattr", path.display()));
    Gfid::from_slice(&v).unwrap_or_else(|| panic!("{}: gfid of {} bytes", path.display(), v.len()))
}

#[test]
fn regular_files_on_one_brick_directories_on_all() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(4).unwrap();
    let bricks = c.create_started_volume("vol1", &[1, 2, 3, 4]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();

    let dirs = ["a", "a/b", "a/b/c", "d"];
    for d in dirs {
        std::fs::create_dir(m.join(d)).unwrap();
    }
    let mut files = Vec::new();
    for i in 0..200 {
        let dir = ["", "a", "a/b", "a/b/c", "d"][i % 5];
        let rel = Path::new(dir).join(format!("file-{i}"));
        std::fs::write(m.join(&rel), content(&rel.to_string_lossy())).unwrap();
        files.push(rel);
    }
    std::os::unix::fs::symlink("a/b/file-2", m.join("link-to-file")).unwrap();

    // Directories: on every brick, one gfid for all copies, each with a layout.
    for d in dirs {
        let copies = brick::locate(&bricks, Path::new(d));
        assert_eq!(
            copies.len(),
            bricks.len(),
            "dir {d} on {} of {} bricks",
            copies.len(),
            bricks.len()
        );
        let gfids: Vec<Gfid> = bricks.iter().map(|b| gfid_of(&b.join(d))).collect();
        assert!(
            gfids.windows(2).all(|w| w[0] == w[1]),
            "dir {d}: gfids differ: {gfids:?}"
        );
        for b in &bricks {
            assert!(copies.iter().all(|(_, e)| e.kind == Kind::Dir));
            let layout = brick::get_xattr(&b.join(d), xattr_names::DHT_LAYOUT).unwrap();
            assert!(
                layout.is_some(),
                "dir {d} on {} has no layout xattr",
                b.display()
            );
        }
    }

    // Files: exactly one brick, a data file with the right bytes, a gfid and
    // its `.kiln/` handle (same inode).
    let mut per_brick: BTreeMap<usize, usize> = BTreeMap::new();
    for rel in &files {
        let found = brick::locate(&bricks, rel);
        assert_eq!(
            found.len(),
            1,
            "{} is on bricks {:?}",
            rel.display(),
            found.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        let (i, e) = &found[0];
        assert_eq!(e.kind, Kind::File, "{}: {e:?}", rel.display());
        let on_brick = bricks[*i].join(rel);
        assert_eq!(
            std::fs::read(&on_brick).unwrap(),
            content(&rel.to_string_lossy())
        );
        let gfid = gfid_of(&on_brick);
        let handle = bricks[*i].join(".kiln").join(gfid.handle_rel_path());
        let (a, b) = (
            std::fs::metadata(&on_brick).unwrap(),
            std::fs::symlink_metadata(&handle)
                .unwrap_or_else(|e| panic!("handle {}: {e}", handle.display())),
        );
        assert_eq!(
            (a.dev(), a.ino()),
            (b.dev(), b.ino()),
            "handle of {} is not a hard link",
            rel.display()
        );
        *per_brick.entry(*i).or_default() += 1;
    }
    let sym = brick::locate(&bricks, Path::new("link-to-file"));
    assert_eq!(sym.len(), 1, "symlink on {} bricks", sym.len());
    assert_eq!(sym[0].1.kind, Kind::Symlink);

    // Spread: 200 names over 4 bricks (expected 50 each; < 10 is > 6 sd off).
    for i in 0..bricks.len() {
        let n = per_brick.get(&i).copied().unwrap_or(0);
        assert!(n >= 10, "brick {i} holds {n} of 200 files: {per_brick:?}");
    }

    // The mount lists each name once, merged across bricks.
    let mut listed: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut want: Vec<String> = files
        .iter()
        .filter(|f| f.parent() == Some(Path::new("")))
        .map(|f| f.to_string_lossy().into_owned())
        .chain(["a", "d", "link-to-file"].map(String::from))
        .collect();
    want.sort();
    assert_eq!(listed, want);
}

#[test]
fn rename_to_another_hashed_brick_leaves_a_link_file() {
    check_prerequisites().unwrap();
    let c = Cluster::pool(4).unwrap();
    let bricks = c.create_started_volume("vol1", &[1, 2, 3, 4]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();

    let n = 40;
    let mut origin = Vec::new();
    for i in 0..n {
        let name = format!("before-{i}");
        std::fs::write(m.join(&name), content(&name)).unwrap();
        origin.push(brick::data_brick(&bricks, Path::new(&name)).expect("one data brick"));
    }
    let mut linked = Vec::new();
    for i in 0..n {
        let (old, new) = (format!("before-{i}"), format!("after-{i}"));
        std::fs::rename(m.join(&old), m.join(&new)).unwrap();
        assert!(
            brick::locate(&bricks, Path::new(&old)).is_empty(),
            "{old} left on a brick"
        );

        let found = brick::locate(&bricks, Path::new(&new));
        let data: Vec<usize> = found
            .iter()
            .filter(|(_, e)| e.kind == Kind::File)
            .map(|(b, _)| *b)
            .collect();
        assert_eq!(data, vec![origin[i]], "{new}: the data stays where it was");
        let data_path = bricks[origin[i]].join(&new);
        assert_eq!(std::fs::read(&data_path).unwrap(), content(&old));

        let links: Vec<&(usize, brick::Entry)> = found
            .iter()
            .filter(|(_, e)| e.kind == Kind::LinkFile)
            .collect();
        let others: Vec<&(usize, brick::Entry)> = found
            .iter()
            .filter(|(_, e)| !matches!(e.kind, Kind::File | Kind::LinkFile))
            .collect();
        assert!(others.is_empty(), "{new}: unexpected entries {others:?}");
        assert!(links.len() <= 1, "{new}: {} link files", links.len());
        if let Some((b, e)) = links.first() {
            assert_ne!(*b, origin[i], "a link file beside its own data");
            assert_eq!(e.size, 0);
            assert_eq!(e.mode & 0o7777, 0o1000, "link file mode {:o}", e.mode);
            assert!(
                !e.linkto.as_deref().unwrap_or_default().is_empty(),
                "empty linkto"
            );
            assert_eq!(
                gfid_of(&bricks[*b].join(&new)),
                gfid_of(&data_path),
                "link file gfid"
            );
            linked.push((new.clone(), *b));
        }
        // Through the mount the file reads whole under its new name.
        assert_eq!(std::fs::read(m.join(&new)).unwrap(), content(&old));
        assert!(!m.join(&old).exists());
    }
    // 40 renames over 4 bricks: about 30 change the hashed brick.
    assert!(
        linked.len() >= 5,
        "only {} of {n} renames left a link file",
        linked.len()
    );

    // readdir shows each new name once and never a link file twice.
    let mut listed: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("after-{i}")).collect();
    want.sort();
    assert_eq!(listed, want);
    for name in &want {
        let md = std::fs::metadata(m.join(name)).unwrap();
        assert!(md.is_file() && md.len() > 0, "{name} shows as {md:?}");
    }

    // Unlinking removes both the data file and the link file.
    for (name, _) in linked.iter().take(5) {
        std::fs::remove_file(m.join(name)).unwrap();
        let left: Vec<PathBuf> = brick::locate(&bricks, Path::new(name))
            .into_iter()
            .map(|(b, _)| bricks[b].clone())
            .collect();
        assert!(left.is_empty(), "{name} left on {left:?}");
    }
}
