//! The gateway registered with the host's portmapper on port 111 (ours, or an
//! rpcbind already there), driven by the stock clients that find services
//! through it: rpcinfo (TCP and UDP pings, version mismatch), showmount, and
//! libnfs's tools without explicit ports. The only test binding port 111.

mod common;

use common::*;
use kiln_nfs3::NfsConfig;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_find_the_gateway_through_port_111() {
    let env = start_with(
        2,
        &[("nfs.export-dir", "/sub")],
        NfsConfig {
            listen: "127.0.0.1".parse().unwrap(),
            nfs_ports: vec![0],
            mount_port: 0,
            portmap_port: Some(111),
            fd_idle: Duration::from_secs(30),
        },
    )
    .await;
    // libnfs mounts every export below the one it opens: /tv/sub must exist.
    env.volume
        .mkdir(
            kiln_core::Gfid::ROOT,
            &kiln_core::Name::new("sub").unwrap(),
            &kiln_core::client::Caller::ROOT,
            0o755,
        )
        .await
        .unwrap();
    let pm = env.server.portmapper().expect("portmapper");
    eprintln!(
        "portmapper at {} (external: {})",
        pm.addr(),
        pm.is_external()
    );
    let nfs_port = env.nfs_addr().port().to_string();

    let (ok, out, err) = run("rpcinfo", &["-p", "127.0.0.1"]).await;
    assert!(ok, "rpcinfo -p: {err}");
    let table = String::from_utf8_lossy(&out);
    for (prog, vers, proto) in [
        ("100003", "3", "tcp"),
        ("100003", "3", "udp"),
        ("100005", "1", "tcp"),
        ("100005", "3", "udp"),
    ] {
        assert!(
            table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4 && f[0] == prog && f[1] == vers && f[2] == proto
            }),
            "rpcinfo -p lacks {prog} v{vers} {proto}:\n{table}"
        );
    }
    assert!(
        table.contains(&nfs_port),
        "nfs port {nfs_port} not registered:\n{table}"
    );

    for (flag, prog, vers) in [
        ("-t", "100003", "3"),
        ("-u", "100003", "3"),
        ("-t", "100005", "1"),
        ("-u", "100005", "3"),
    ] {
        let (ok, out, err) = run("rpcinfo", &[flag, "127.0.0.1", prog, vers]).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            ok && text.contains("ready and waiting"),
            "rpcinfo {flag} {prog} {vers}: {text} {err}"
        );
    }
    let (ok, out, err) = run("showmount", &["-e", "127.0.0.1"]).await;
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "showmount -e: {err}");
    assert!(text.lines().any(|l| l.starts_with("/tv ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("/tv/sub ")), "{text}");

    // libnfs without nfsport/mountport asks the portmapper.
    let src = env.scratch("via-pmap");
    std::fs::write(&src, b"found through the portmapper").unwrap();
    let (ok, _, err) = run(
        "nfs-cp",
        &[src.to_str().unwrap(), "nfs://127.0.0.1/tv/pm.txt?version=3"],
    )
    .await;
    assert!(ok, "nfs-cp via portmap: {err}");
    let (ok, out, err) = run("nfs-cat", &["nfs://127.0.0.1/tv/pm.txt?version=3"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, b"found through the portmapper");
    let (ok, out, _) = run("showmount", &["-a", "127.0.0.1"]).await;
    assert!(
        ok && String::from_utf8_lossy(&out).contains("127.0.0.1:/tv"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // Shutting down takes our programs out of the portmapper.
    let pm_addr = env.server.portmapper().map(|p| p.addr()).unwrap();
    let external = env.server.portmapper().map(|p| p.is_external()).unwrap();
    env.server.shutdown().await;
    if external {
        let port = kiln_portmap::pmap::service::getport(pm_addr, 100003, 3, 6)
            .await
            .unwrap();
        assert_eq!(port, 0, "still registered after shutdown");
    }
    drop(env.tasks);

    // The host's own rpcbind on 111 (when installed): the gateway registers
    // with it instead of serving a portmapper.
    if std::path::Path::new("/usr/sbin/rpcbind").exists() && !external {
        adopts_the_host_rpcbind().await;
    } else {
        eprintln!(
            "skipping the rpcbind adoption check (no /usr/sbin/rpcbind, or one already runs)"
        );
    }
}

async fn adopts_the_host_rpcbind() {
    let mut rpcbind = std::process::Command::new("/usr/sbin/rpcbind")
        .args(["-f"])
        .spawn()
        .expect("start rpcbind");
    let addr: std::net::SocketAddr = "127.0.0.1:111".parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kiln_portmap::pmap::service::null(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "rpcbind did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let env = start_with(
        2,
        &[],
        NfsConfig {
            listen: "127.0.0.1".parse().unwrap(),
            nfs_ports: vec![0],
            mount_port: 0,
            portmap_port: Some(111),
            fd_idle: Duration::from_secs(30),
        },
    )
    .await;
    let external = env.server.portmapper().map(|p| p.is_external());
    let (ok, out, _) = run("rpcinfo", &["-p", "127.0.0.1"]).await;
    let table = String::from_utf8_lossy(&out).into_owned();
    let (cat_ok, cat, cat_err) = {
        let src = env.scratch("via-rpcbind");
        std::fs::write(&src, b"through rpcbind").unwrap();
        let (ok, _, err) = run(
            "nfs-cp",
            &[src.to_str().unwrap(), "nfs://127.0.0.1/tv/rb.txt?version=3"],
        )
        .await;
        assert!(ok, "nfs-cp via rpcbind: {err}");
        run("nfs-cat", &["nfs://127.0.0.1/tv/rb.txt?version=3"]).await
    };
    env.server.shutdown().await;
    let after = kiln_portmap::pmap::service::getport(addr, 100003, 3, 6).await;
    let _ = rpcbind.kill();
    let _ = rpcbind.wait();
    assert_eq!(external, Some(true), "the running rpcbind was not adopted");
    assert!(
        ok && table.contains("100003") && table.contains("100005"),
        "{table}"
    );
    assert!(cat_ok && cat == b"through rpcbind", "{cat_err}");
    assert_eq!(
        after.unwrap(),
        0,
        "still registered with rpcbind after shutdown"
    );
}
