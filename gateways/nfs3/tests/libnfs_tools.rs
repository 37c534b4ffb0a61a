//! libnfs's command-line tools (Debian libnfs-utils: nfs-cp, nfs-cat,
//! nfs-ls) against the gateway serving a volume over two real bricks: write,
//! read back with checksums, list, delete, a 20 MiB file, AUTH_SYS ownership
//! and permission checks.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_list_delete() {
    let env = start(2, &[]).await;
    // Several files so both bricks hold some.
    let mut sums = Vec::new();
    for i in 0..6 {
        let data = pattern(100_000 + i * 7919, i as u64);
        let local = env.scratch(&format!("src{i}"));
        std::fs::write(&local, &data).unwrap();
        let (ok, _, err) = run(
            "nfs-cp",
            &[
                local.to_str().unwrap(),
                &env.url(&format!("/file{i}.bin"), ""),
            ],
        )
        .await;
        assert!(ok, "nfs-cp up failed: {err}");
        sums.push(sha256(&data));
    }
    for (i, sum) in sums.iter().enumerate() {
        let (ok, out, err) = run("nfs-cat", &[&env.url(&format!("/file{i}.bin"), "")]).await;
        assert!(ok, "nfs-cat failed: {err}");
        assert_eq!(&sha256(&out), sum, "file{i} read back differs");
    }
    // The bricks really hold the files, spread over both.
    let on_brick = |b: &std::path::PathBuf| {
        (0..6)
            .filter(|i| {
                b.join(format!("file{i}.bin"))
                    .metadata()
                    .map(|m| m.len() > 0)
                    .unwrap_or(false)
            })
            .count()
    };
    assert_eq!(on_brick(&env.bricks[0]) + on_brick(&env.bricks[1]), 6);
    assert!(
        on_brick(&env.bricks[0]) > 0 && on_brick(&env.bricks[1]) > 0,
        "DHT spread"
    );

    let (ok, out, err) = run("nfs-ls", &[&env.url("", "")]).await;
    assert!(ok, "nfs-ls failed: {err}");
    let listing = String::from_utf8_lossy(&out);
    for i in 0..6 {
        assert!(
            listing.contains(&format!("file{i}.bin")),
            "listing lacks file{i}.bin:\n{listing}"
        );
    }
    assert!(
        !listing.contains(".kiln"),
        "internal directory listed:\n{listing}"
    );
    let line = listing.lines().find(|l| l.ends_with("file0.bin")).unwrap();
    assert!(line.contains("100000"), "size shown: {line}");

    // Delete (libnfs-utils has no rm: a raw REMOVE), then list again.
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    assert_eq!(raw.remove(&root, "file3.bin", false).await, 0);
    assert_eq!(
        raw.remove(&root, "file3.bin", false).await,
        2,
        "NOENT after remove"
    );
    let (ok, out, _) = run("nfs-ls", &[&env.url("", "")]).await;
    assert!(ok);
    assert!(!String::from_utf8_lossy(&out).contains("file3.bin"));
    assert!(!env.bricks.iter().any(|b| b.join("file3.bin").exists()));
    let (ok, _, _) = run("nfs-cat", &[&env.url("/file3.bin", "")]).await;
    assert!(!ok, "a removed file cannot be read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_file_round_trip() {
    let env = start(2, &[]).await;
    let data = pattern(20 * 1024 * 1024 + 12345, 99);
    let up = env.scratch("big.src");
    std::fs::write(&up, &data).unwrap();
    let (ok, _, err) = run("nfs-cp", &[up.to_str().unwrap(), &env.url("/big.bin", "")]).await;
    assert!(ok, "nfs-cp up: {err}");
    let down = env.scratch("big.back");
    let (ok, _, err) = run(
        "nfs-cp",
        &[&env.url("/big.bin", ""), down.to_str().unwrap()],
    )
    .await;
    assert!(ok, "nfs-cp down: {err}");
    assert_eq!(sha256_file(&down), sha256(&data));
    let a = env.volume.resolve_path("/big.bin").await.unwrap();
    assert_eq!(a.size, data.len() as u64);
    // READ/WRITE went through cached fds: the file is open once, not per call.
    let (files, _) = env.server.open_fds("tv").unwrap();
    assert!(files <= 2, "fd cache holds {files} files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_sys_ownership_and_permissions() {
    // libnfs mounts a URL's parent directory: /tv/shared must be exported.
    let env = start(2, &[("nfs.export-dir", "/shared")]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    // A directory user 1000 may write in, and a private root file.
    let shared = raw.mkdir(&root, "shared", 0o777).await.unwrap();
    let secret = env.scratch("secret");
    std::fs::write(&secret, b"root only").unwrap();
    let (ok, _, err) = run(
        "nfs-cp",
        &[secret.to_str().unwrap(), &env.url("/secret.txt", "")],
    )
    .await;
    assert!(ok, "{err}");
    let fh = raw.lookup(&root, "secret.txt").await.unwrap();
    assert_eq!(raw.chmod(&fh, 0o600).await, 0);

    // uid 1000 cannot read it, nor create in the root directory (0755 root).
    let as_user = "&uid=1000&gid=1000";
    let (ok, _, _) = run("nfs-cat", &[&env.url("/secret.txt", as_user)]).await;
    assert!(!ok, "uid 1000 read a 0600 root file");
    let (ok, _, _) = run(
        "nfs-cp",
        &[
            secret.to_str().unwrap(),
            &env.url("/user-in-root.txt", as_user),
        ],
    )
    .await;
    assert!(
        !ok,
        "uid 1000 created a file in a 0755 root-owned directory"
    );
    assert!(env.volume.resolve_path("/user-in-root.txt").await.is_err());

    // In the shared directory the new file belongs to 1000:1000.
    let (ok, _, err) = run(
        "nfs-cp",
        &[
            secret.to_str().unwrap(),
            &env.url("/shared/mine.txt", as_user),
        ],
    )
    .await;
    assert!(ok, "uid 1000 could not create in a 0777 directory: {err}");
    let a = env.volume.resolve_path("/shared/mine.txt").await.unwrap();
    assert_eq!((a.uid, a.gid), (1000, 1000));
    let (ok, out, _) = run("nfs-cat", &[&env.url("/shared/mine.txt", as_user)]).await;
    assert!(ok);
    let (ok, out2, _) = run("nfs-ls", &[&env.url("/shared", as_user)]).await;
    assert!(ok && String::from_utf8_lossy(&out2).contains("mine.txt"));
    // A directory not listed in nfs.export-dir cannot be mounted.
    assert_eq!(raw.mkdir(&root, "private", 0o777).await.map(|_| ()), Ok(()));
    assert_eq!(raw.mnt("/tv/private").await, Err(2));
    assert_eq!(out, b"root only");
    // Root reads anything; another user cannot chmod 1000's file.
    let mine = raw.lookup(&shared, "mine.txt").await.unwrap();
    raw.as_user(2000, 2000);
    assert_eq!(
        raw.chmod(&mine, 0o777).await,
        1,
        "PERM for a non-owner chmod"
    );
    assert_eq!(
        raw.remove(&root, "secret.txt", false).await,
        13,
        "ACCES removing from root's dir"
    );
    raw.as_user(1000, 1000);
    assert_eq!(raw.chmod(&mine, 0o640).await, 0);
    assert_eq!(raw.getattr(&mine).await.unwrap().1, 0o640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_squash_maps_root_to_nobody() {
    let env = start(2, &[("server.root-squash", "on")]).await;
    let mut raw = Raw::connect(env.nfs_addr()).await;
    let root = raw.mnt("/tv").await.unwrap();
    // Squashed root may not write into the 0755 root-owned volume root.
    assert_eq!(raw.mkdir(&root, "d", 0o755).await, Err(13));
    // Open the root up as the volume's admin, then create as squashed root.
    env.volume
        .setattr(
            kiln_core::Gfid::ROOT,
            &kiln_core::SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let src = env.scratch("sq");
    std::fs::write(&src, b"squashed").unwrap();
    let (ok, _, err) = run(
        "nfs-cp",
        &[src.to_str().unwrap(), &env.url("/squashed.txt", "")],
    )
    .await;
    assert!(ok, "{err}");
    let a = env.volume.resolve_path("/squashed.txt").await.unwrap();
    assert_eq!((a.uid, a.gid), (65534, 65534));
}

/// Rough throughput of nfs-cp through the gateway (run with --release --ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_nfs_cp() {
    let env = start(2, &[]).await;
    let mib = std::env::var("KILN_NFS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256usize);
    let data = pattern(mib << 20, 3);
    let up = env.scratch("bench.src");
    std::fs::write(&up, &data).unwrap();
    let t = std::time::Instant::now();
    let (ok, _, err) = run(
        "nfs-cp",
        &[up.to_str().unwrap(), &env.url("/bench.bin", "")],
    )
    .await;
    assert!(ok, "{err}");
    let w = t.elapsed();
    let down = env.scratch("bench.back");
    let t = std::time::Instant::now();
    let (ok, _, err) = run(
        "nfs-cp",
        &[&env.url("/bench.bin", ""), down.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{err}");
    let r = t.elapsed();
    assert_eq!(sha256_file(&down), sha256(&data));
    eprintln!(
        "nfs-cp {mib} MiB: write {:.0} MiB/s, read {:.0} MiB/s",
        mib as f64 / w.as_secs_f64(),
        mib as f64 / r.as_secs_f64()
    );
}
