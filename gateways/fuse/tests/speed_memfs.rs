//! Throughput of the FUSE layer alone (in-memory volume): sequential write
//! and read, small-file create/stat/delete. Ignored by default; run with
//! `cargo test --release -p kiln-fuse --test speed_memfs -- --ignored --nocapture`.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::time::Instant;

#[test]
#[ignore]
fn fuse_layer_speed() {
    let mut cfg = kiln_fuse::MountConfig::default();
    if let Some(n) = std::env::var("KILN_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.threads = n;
    }
    let m = common::mount_mem_with(cfg);
    let size: usize = 512 << 20;
    let block = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    let mut f = File::create(m.p("seq")).unwrap();
    for _ in 0..size / block.len() {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let w = size as f64 / t.elapsed().as_secs_f64() / 1e6;

    let t = Instant::now();
    let mut f = File::open(m.p("seq")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, size);
    let r = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    fs::remove_file(m.p("seq")).unwrap();

    fs::create_dir(m.p("small")).unwrap();
    let data = vec![7u8; 4096];
    let n = 5000;
    let t = Instant::now();
    for i in 0..n {
        let mut f = File::create(m.p(&format!("small/f{i}"))).unwrap();
        f.write_all(&data).unwrap();
    }
    let create = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        fs::metadata(m.p(&format!("small/f{i}"))).unwrap();
    }
    let stat = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed = fs::read_dir(m.p("small"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .filter(|l| *l == 4096)
        .count();
    assert_eq!(listed, n);
    let ls = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        fs::remove_file(m.p(&format!("small/f{i}"))).unwrap();
    }
    let del = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "memfs via FUSE: write {w:.0} MB/s, read {r:.0} MB/s, create {create:.0}/s, \
         stat {stat:.0}/s, ls -l {ls:.0}/s, delete {del:.0}/s"
    );
}
