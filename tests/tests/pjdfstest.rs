//! POSIX conformance of the FUSE mount: the `pjdfstest` suite (crates.io,
//! installed by `scripts/test.sh` with `cargo install pjdfstest`) run as
//! root inside the client's namespaces against a two-brick distributed
//! volume. Every failure is listed; the test fails on any failure not in
//! `KNOWN_FAILURES`, each of which must carry its reason.

use kiln_tests::{check_prerequisites, Cluster};
use std::path::PathBuf;
use std::time::Duration;

/// Cases allowed to fail, with the reason (keep in step with the notes).
const KNOWN_FAILURES: &[(&str, &str)] = &[];

fn pjdfstest_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PJDFSTEST_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("pjdfstest not installed: run scripts/test.sh (cargo install pjdfstest)")
        })
}

#[test]
fn pjdfstest_on_the_fuse_mount() {
    check_prerequisites().unwrap();
    let bin = pjdfstest_bin();
    let users = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        users.lines().any(|l| l.starts_with("tests:"))
            && users.lines().any(|l| l.starts_with("nobody:")),
        "pjdfstest needs users `nobody` and `tests`: run scripts/test.sh"
    );

    let c = Cluster::pool(2).unwrap();
    c.create_started_volume("vol1", &[1, 2]).unwrap();
    let m = c.client().mount("node01:/vol1").unwrap();

    // A second file system for the EXDEV cases: a directory on the root fs.
    let secondary = c.dir().join("pjdfstest-secondary");
    std::fs::create_dir_all(&secondary).unwrap();
    let conf = c.dir().join("pjdfstest.toml");
    let expected: Vec<String> = KNOWN_FAILURES
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect();
    std::fs::write(
        &conf,
        format!(
            "[features]\nsecondary_fs = {:?}\nposix_fallocate = {{}}\nutime_now = {{}}\n\
             utimensat = {{}}\nrename_ctime = {{}}\n\n\
             [settings]\nnaptime = 0.01\nallow_remount = false\nexpected_failures = [{}]\n",
            secondary.to_string_lossy(),
            expected.join(", ")
        ),
    )
    .unwrap();

    let bin_s = bin.to_string_lossy().into_owned();
    let conf_s = conf.to_string_lossy().into_owned();
    let mnt_s = m.inner().to_string_lossy().into_owned();
    let out = c
        .client()
        .run_timeout(
            &[
                "env",
                "NO_COLOR=1",
                "CLICOLOR=0",
                &bin_s,
                "-c",
                &conf_s,
                "-p",
                &mnt_s,
            ],
            Duration::from_secs(20 * 60),
        )
        .unwrap();
    assert!(!out.timed_out, "pjdfstest did not finish: {out}");

    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED") || l.contains("PASSED UNEXPECTEDLY"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let summary = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or("(no summary line)");
    eprintln!("pjdfstest {summary}");
    for f in &failed {
        eprintln!("pjdfstest FAILED {f}");
    }
    assert!(
        out.stdout.contains("Summary"),
        "pjdfstest stopped before its summary (its panics print nothing: a set-up \
         step such as its temp dir on the mount failed; see the client log):\n{out}\n{}",
        std::fs::read_to_string(m.log_file()).unwrap_or_default()
    );
    assert!(
        failed.is_empty(),
        "{} pjdfstest case(s) failed: {failed:?}\n{}",
        failed.len(),
        out.stdout
    );
    assert!(out.success(), "{out}");
}
