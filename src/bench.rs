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
[--file-kib N] [--tree DIRSxFILES] [--rounds N] [--json]

Runs the same workload in MOUNT_PATH (a Kiln mount) and in a local directory
(default: $TMPDIR or /var/tmp; put it on the bricks' disk for a fair ratio):
  sequential write of --size-mib MiB (default 1024) with fsync at the end,
  sequential read of it, --files (default 5000) files of --file-kib KiB
  (default 4): create, stat, ls -l (readdir + stat of every entry), delete;
  a tree of --tree dirs x files (default 50x100) of 1 KiB files: create, read.
Both sides run --rounds times (default 2) in alternating order (kiln, local,
then local, kiln, ...), so neither always gets the disk's burst or its
aftermath; each figure is the mean, and every sample is printed too.
As root, page caches are synced and dropped (echo 3 > /proc/sys/vm/drop_caches)
before the sequential write and before every reading phase; otherwise they
are not, and the output says so.";

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
    rounds: usize,
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
        rounds: 2,
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
            "--rounds" => o.rounds = value("--rounds")?.parse().context("--rounds")?,
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
    if o.size_mib == 0 || o.files == 0 || o.tree_dirs == 0 || o.tree_files == 0 || o.rounds == 0 {
        bail!("sizes and counts must be at least 1");
    }
    Ok(o)
}

/// One measured figure on both targets (means of the samples).
#[derive(Debug, Clone)]
struct Row {
    metric: String,
    unit: &'static str,
    kiln: f64,
    local: f64,
    kiln_samples: Vec<f64>,
    local_samples: Vec<f64>,
}

/// Which side a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kiln,
    Local,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Kiln => "kiln",
            Side::Local => "local",
        }
    }
}

/// The run order: kiln first in even rounds, local first in odd ones.
fn run_order(rounds: usize) -> Vec<Side> {
    (0..rounds)
        .flat_map(|r| {
            if r % 2 == 0 {
                [Side::Kiln, Side::Local]
            } else {
                [Side::Local, Side::Kiln]
            }
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
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
    let order = run_order(o.rounds);
    let mut kiln_runs: Vec<Figures> = Vec::new();
    let mut local_runs: Vec<Figures> = Vec::new();
    for (i, side) in order.iter().enumerate() {
        let tag = format!("kiln-bench-{}-{i}", std::process::id());
        let (base, runs) = match side {
            Side::Kiln => (&o.mount, &mut kiln_runs),
            Side::Local => (&o.local, &mut local_runs),
        };
        let dir = base.join(&tag);
        let label = format!("{} (run {} of {})", side.name(), i + 1, order.len());
        let figs = measure(&label, &dir, &o, drop_caches);
        let _ = fs::remove_dir_all(&dir);
        runs.push(figs?);
    }

    let rows: Vec<Row> = kiln_runs[0]
        .iter()
        .enumerate()
        .map(|(i, (metric, unit, _))| {
            let kiln_samples: Vec<f64> = kiln_runs.iter().map(|f| f[i].2).collect();
            let local_samples: Vec<f64> = local_runs.iter().map(|f| f[i].2).collect();
            Row {
                metric: metric.clone(),
                unit,
                kiln: mean(&kiln_samples),
                local: mean(&local_samples),
                kiln_samples,
                local_samples,
            }
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

    // Sequential write with fsync, then read; both sides start from a
    // clean page cache with nothing else left to write back.
    drop_page_caches(drop);
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
        "page caches dropped before writes and reads: {}",
        if dropped { "yes" } else { "no (not root)" }
    );
    let order: Vec<&str> = run_order(o.rounds).iter().map(|s| s.name()).collect();
    println!(
        "runs: {} (each figure is the mean of {} runs per side)",
        order.join(", "),
        o.rounds
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
    if o.rounds > 1 {
        println!();
        println!("samples, in run order (kiln | local):");
        for r in rows {
            println!(
                "{:<34} {} | {}",
                r.metric,
                samples(&r.kiln_samples),
                samples(&r.local_samples)
            );
        }
    }
}

fn samples(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_json(o: &Opts, dropped: bool, rows: &[Row]) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"metric\":{},\"unit\":{},\"kiln\":{:.3},\"local\":{:.3},\"ratio\":{:.4},\"kiln_samples\":[{}],\"local_samples\":[{}]}}",
                json_str(&r.metric),
                json_str(r.unit),
                r.kiln,
                r.local,
                ratio(r),
                json_nums(&r.kiln_samples),
                json_nums(&r.local_samples)
            )
        })
        .collect();
    let order: Vec<String> = run_order(o.rounds)
        .iter()
        .map(|s| json_str(s.name()))
        .collect();
    println!(
        "{{\"kiln_path\":{},\"local_path\":{},\"caches_dropped\":{},\"rounds\":{},\"order\":[{}],\"results\":[{}]}}",
        json_str(&o.mount.to_string_lossy()),
        json_str(&o.local.to_string_lossy()),
        dropped,
        o.rounds,
        order.join(","),
        items.join(",")
    );
}

fn json_nums(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(",")
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
        assert_eq!(o.rounds, 2);
        assert_eq!(parse(&args("/a --rounds 3")).unwrap().rounds, 3);
        assert!(parse(&args("/a --rounds 0")).is_err());
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
    fn runs_alternate_sides() {
        use Side::*;
        assert_eq!(run_order(1), [Kiln, Local]);
        assert_eq!(run_order(3), [Kiln, Local, Local, Kiln, Kiln, Local]);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
