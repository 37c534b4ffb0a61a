//! `kiln bench`: measures a Kiln mount against a local directory of the same
//! disk, in one run, and prints each figure with the Kiln/local ratio.
//! Plain blocking std I/O, the way an application sees a file system.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "usage: kiln bench MOUNT_PATH [--local DIR] [--size-mib N] [--files N] \
[--file-kib N] [--tree DIRSxFILES] [--json]

Runs the same workload in MOUNT_PATH (a Kiln mount) and in a local directory
(default: $TMPDIR or /var/tmp; put it on the bricks' disk for a fair ratio):
  sequential write of --size-mib MiB (default 1024) with fsync at the end,
  sequential read of it, --files (default 5000) files of --file-kib KiB
  (default 4): create, stat, ls -l (readdir + stat of every entry), delete;
  a tree of --tree dirs x files (default 50x100) of 1 KiB files: create, read.
As root, page caches are dropped (echo 3 > /proc/sys/vm/drop_caches) before
every reading phase; otherwise they are not, and the output says so.";

/// Parsed command line.
#[derive(Debug, Clone)]
struct Opts {
    mount: PathBuf,
    local: PathBuf,
    size_mib: u64,
    files: usize,
    file_kib: usize,
    tree_dirs: usize,
    tree_files: usize,
    json: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut mount = None;
    let mut o = Opts {
        mount: PathBuf::new(),
        local: std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp")),
        size_mib: 1024,
        files: 5000,
        file_kib: 4,
        tree_dirs: 50,
        tree_files: 100,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--local" => o.local = PathBuf::from(value("--local")?),
            "--size-mib" => o.size_mib = value("--size-mib")?.parse().context("--size-mib")?,
            "--files" => o.files = value("--files")?.parse().context("--files")?,
            "--file-kib" => o.file_kib = value("--file-kib")?.parse().context("--file-kib")?,
            "--tree" => {
                let v = value("--tree")?;
                let (d, f) = v
                    .split_once('x')
                    .context("--tree DIRSxFILES, e.g. 50x100")?;
                o.tree_dirs = d.parse().context("--tree dirs")?;
                o.tree_files = f.parse().context("--tree files")?;
            }
            "--json" => o.json = true,
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => {
                if mount.replace(PathBuf::from(s)).is_some() {
                    bail!("one MOUNT_PATH only\n{USAGE}");
                }
            }
        }
    }
    o.mount = mount.with_context(|| format!("missing MOUNT_PATH\n{USAGE}"))?;
    if o.size_mib == 0 || o.files == 0 || o.tree_dirs == 0 || o.tree_files == 0 {
        bail!("sizes and counts must be at least 1");
    }
    Ok(o)
}

/// One measured figure on both targets.
#[derive(Debug, Clone)]
struct Row {
    metric: String,
    unit: &'static str,
    kiln: f64,
    local: f64,
}

/// Runs the benchmark with the arguments after `kiln bench`.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    for p in [&o.mount, &o.local] {
        if !p.is_dir() {
            bail!("{} is not a directory", p.display());
        }
    }
    let drop_caches = is_root();
    if !drop_caches {
        eprintln!("kiln bench: not root: page caches are NOT dropped between phases");
    }
    let tag = format!("kiln-bench-{}", std::process::id());
    let kiln_dir = o.mount.join(&tag);
    let local_dir = o.local.join(&tag);
    let kiln = measure("kiln", &kiln_dir, &o, drop_caches);
    let _ = fs::remove_dir_all(&kiln_dir);
    let kiln = kiln?;
    let local = measure("local", &local_dir, &o, drop_caches);
    let _ = fs::remove_dir_all(&local_dir);
    let local = local?;

    let rows: Vec<Row> = kiln
        .into_iter()
        .zip(local)
        .map(|((metric, unit, k), (_, _, l))| Row {
            metric,
            unit,
            kiln: k,
            local: l,
        })
        .collect();
    if o.json {
        print_json(&o, drop_caches, &rows);
    } else {
        print_table(&o, drop_caches, &rows);
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn drop_page_caches(enabled: bool) {
    if !enabled {
        return;
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3\n") {
        eprintln!("kiln bench: cannot drop caches: {e}");
    }
}

/// (metric, unit, value) in a fixed order, the same for both targets.
type Figures = Vec<(String, &'static str, f64)>;

fn measure(label: &str, dir: &Path, o: &Opts, drop: bool) -> Result<Figures> {
    fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut out = Figures::new();
    let step = |what: &str| eprintln!("kiln bench: {label}: {what}");

    // Sequential write with fsync, then read.
    step("sequential write");
    let big = dir.join("seq.dat");
    let bytes = o.size_mib * 1024 * 1024;
    let chunk = pattern(1024 * 1024);
    let t = Instant::now();
    {
        let mut f = File::create(&big).with_context(|| format!("create {}", big.display()))?;
        for _ in 0..o.size_mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    out.push((
        format!("seq write {} MiB + fsync", o.size_mib),
        "MB/s",
        mbps(bytes, t),
    ));
    drop_page_caches(drop);
    step("sequential read");
    let t = Instant::now();
    let mut got = 0u64;
    {
        let mut f = File::open(&big)?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
    }
    let read_rate = mbps(got, t);
    if got != bytes {
        bail!("{label}: read back {got} of {bytes} bytes");
    }
    out.push((format!("seq read {} MiB", o.size_mib), "MB/s", read_rate));
    fs::remove_file(&big)?;

    // Small files: create, stat, ls -l, delete.
    let small = dir.join("small");
    fs::create_dir(&small)?;
    let body = pattern(o.file_kib * 1024);
    let names: Vec<PathBuf> = (0..o.files)
        .map(|i| small.join(format!("f{i:06}")))
        .collect();
    step("small-file create");
    let t = Instant::now();
    for p in &names {
        let mut f = OpenOptions::new().write(true).create_new(true).open(p)?;
        f.write_all(&body)?;
    }
    let kib = o.file_kib;
    out.push((
        format!("create {} x {kib} KiB", o.files),
        "files/s",
        rate(o.files, t),
    ));
    drop_page_caches(drop);
    step("stat");
    let t = Instant::now();
    for p in &names {
        let m = fs::symlink_metadata(p)?;
        if m.size() != (kib * 1024) as u64 {
            bail!("{label}: {} has {} bytes", p.display(), m.size());
        }
    }
    out.push((
        format!("stat {} files", o.files),
        "files/s",
        rate(o.files, t),
    ));
    drop_page_caches(drop);
    step("ls -l");
    let t = Instant::now();
    let mut seen = 0usize;
    for e in fs::read_dir(&small)? {
        let e = e?;
        fs::symlink_metadata(e.path())?;
        seen += 1;
    }
    if seen != o.files {
        bail!("{label}: readdir saw {seen} of {} files", o.files);
    }
    out.push((
        format!("ls -l {} files", o.files),
        "entries/s",
        rate(seen, t),
    ));
    step("delete");
    let t = Instant::now();
    for p in &names {
        fs::remove_file(p)?;
    }
    out.push((
        format!("delete {} files", o.files),
        "files/s",
        rate(o.files, t),
    ));
    fs::remove_dir(&small)?;

    // A tree of 1 KiB files: create, then read back.
    let tree = dir.join("tree");
    fs::create_dir(&tree)?;
    let kb = pattern(1024);
    let total = o.tree_dirs * o.tree_files;
    step("tree create");
    let t = Instant::now();
    for d in 0..o.tree_dirs {
        let sub = tree.join(format!("d{d:03}"));
        fs::create_dir(&sub)?;
        for f in 0..o.tree_files {
            let mut fh = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(sub.join(format!("f{f:04}")))?;
            fh.write_all(&kb)?;
        }
    }
    let shape = format!("{}x{}", o.tree_dirs, o.tree_files);
    out.push((
        format!("tree {shape} x 1 KiB create"),
        "files/s",
        rate(total, t),
    ));
    drop_page_caches(drop);
    step("tree read");
    let t = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut read = 0usize;
    for d in fs::read_dir(&tree)? {
        let d = d?;
        for f in fs::read_dir(d.path())? {
            buf.clear();
            File::open(f?.path())?.read_to_end(&mut buf)?;
            if buf.len() != 1024 {
                bail!("{label}: tree file of {} bytes", buf.len());
            }
            read += 1;
        }
    }
    if read != total {
        bail!("{label}: read {read} of {total} tree files");
    }
    out.push((
        format!("tree {shape} x 1 KiB read"),
        "files/s",
        rate(total, t),
    ));
    fs::remove_dir_all(&tree)?;
    fs::remove_dir(dir)?;
    Ok(out)
}

/// Non-repeating, non-zero bytes (no sparse or compressible shortcut).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64().max(1e-9)
}

fn mbps(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / 1e6 / secs(t)
}

fn rate(n: usize, t: Instant) -> f64 {
    n as f64 / secs(t)
}

fn ratio(r: &Row) -> f64 {
    if r.local > 0.0 {
        r.kiln / r.local
    } else {
        0.0
    }
}

fn print_table(o: &Opts, dropped: bool, rows: &[Row]) {
    println!("kiln:  {}", o.mount.display());
    println!("local: {} ({})", o.local.display(), describe_fs(&o.local));
    println!(
        "page caches dropped before reads: {}",
        if dropped { "yes" } else { "no (not root)" }
    );
    println!();
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>8}",
        "metric", "unit", "kiln", "local", "ratio"
    );
    for r in rows {
        println!(
            "{:<34} {:>10} {:>12.1} {:>12.1} {:>7.0}%",
            r.metric,
            r.unit,
            r.kiln,
            r.local,
            ratio(r) * 100.0
        );
    }
}

fn print_json(o: &Opts, dropped: bool, rows: &[Row]) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"metric\":{},\"unit\":{},\"kiln\":{:.3},\"local\":{:.3},\"ratio\":{:.4}}}",
                json_str(&r.metric),
                json_str(r.unit),
                r.kiln,
                r.local,
                ratio(r)
            )
        })
        .collect();
    println!(
        "{{\"kiln_path\":{},\"local_path\":{},\"caches_dropped\":{},\"results\":[{}]}}",
        json_str(&o.mount.to_string_lossy()),
        json_str(&o.local.to_string_lossy()),
        dropped,
        items.join(",")
    );
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The mount that holds `p` (device and file system type), for the header.
fn describe_fs(p: &Path) -> String {
    let Ok(canon) = p.canonicalize() else {
        return "unknown fs".into();
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && canon.starts_with(f[1])).then(|| (f[1].len(), f[0], f[2]))
        })
        .max_by_key(|(len, _, _)| *len);
    match best {
        Some((_, dev, fstype)) => format!("{fstype} on {dev}"),
        None => "unknown fs".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse(&args(
            "/mnt/k --local /data/x --size-mib 8 --files 10 --tree 2x3 --json",
        ))
        .unwrap();
        assert_eq!(o.mount, PathBuf::from("/mnt/k"));
        assert_eq!(o.local, PathBuf::from("/data/x"));
        assert_eq!(
            (o.size_mib, o.files, o.tree_dirs, o.tree_files, o.json),
            (8, 10, 2, 3, true)
        );
        assert!(parse(&args("--files 3")).is_err());
        assert!(parse(&args("/a /b")).is_err());
        assert!(parse(&args("/a --tree 5")).is_err());
        assert!(parse(&args("/a --bogus")).is_err());
    }

    #[test]
    fn runs_on_two_local_dirs() {
        let base = std::env::temp_dir().join(format!("kiln-bench-test-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let o = parse(&args(&format!(
            "{} --local {} --size-mib 2 --files 20 --tree 2x5",
            a.display(),
            b.display()
        )))
        .unwrap();
        let figs = measure("a", &a.join("run"), &o, false).unwrap();
        assert_eq!(figs.len(), 8);
        assert!(figs.iter().all(|(_, _, v)| *v > 0.0), "{figs:?}");
        assert!(!a.join("run").exists(), "bench leaves its dir behind");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
