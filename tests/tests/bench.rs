//! `kiln bench` on a real mount: a small run checks that every figure is
//! measured on both sides; the full-size run (ignored by default, for the
//! numbers: `cargo test -p kiln-tests --test bench -- --ignored --nocapture`
//! with `KILN_BIN` pointing at a release build) prints the table.

use kiln_tests::{check_prerequisites, Cluster};
use std::time::Duration;

/// A one-server volume of four bricks, mounted; runs `kiln bench` on the
/// client with `extra` arguments and returns its stdout.
fn bench(extra: &[&str], timeout: Duration) -> String {
    check_prerequisites().unwrap();
    let c = Cluster::pool(1).unwrap();
    c.create_started_volume("vol1", &[1, 1, 1, 1]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();
    // The local side: a directory on the same disk as the bricks.
    let local = c.dir().join("bench-local");
    std::fs::create_dir_all(&local).unwrap();
    let kiln = c.kiln().to_string_lossy().into_owned();
    let mnt = m.inner().to_string_lossy().into_owned();
    let local_s = local.to_string_lossy().into_owned();
    let mut argv = vec![
        kiln.as_str(),
        "bench",
        mnt.as_str(),
        "--local",
        local_s.as_str(),
    ];
    argv.extend_from_slice(extra);
    let out = c.client().run_timeout(&argv, timeout).unwrap();
    assert!(out.success(), "{out}");
    out.stdout
}

#[test]
fn bench_measures_every_figure_on_a_mount() {
    let out = bench(
        &[
            "--size-mib",
            "8",
            "--files",
            "200",
            "--tree",
            "4x10",
            "--json",
        ],
        Duration::from_secs(300),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{v:#}");
    for r in results {
        for key in ["kiln", "local", "ratio"] {
            let x = r[key].as_f64().unwrap_or(0.0);
            assert!(x > 0.0, "{key} of {} is {x}", r["metric"]);
        }
    }
}

#[test]
#[ignore = "full-size benchmark: minutes of I/O; run by hand for the figures"]
fn bench_full_size() {
    let out = bench(&[], Duration::from_secs(30 * 60));
    println!("{out}");
    assert!(out.contains("ratio"), "{out}");
}
