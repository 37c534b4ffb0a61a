//! `kiln up`: one command for a working single-server Kiln. Starts
//! `kiln server` as a child, creates and starts a default distributed (or,
//! with `--replica N`, replicated) volume of several bricks under a data dir
//! (once), prints how to mount it, and keeps serving until interrupted.

use anyhow::{bail, Context};
use clap::Parser;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "kiln up")]
struct UpCmd {
    /// Where state, logs and bricks live.
    #[arg(long, default_value = "/var/lib/kiln-up")]
    data_dir: PathBuf,
    /// Number of bricks in the default volume.
    #[arg(long, default_value_t = 4)]
    bricks: usize,
    /// Name of the default volume.
    #[arg(long, default_value = "vol0")]
    volume: String,
    /// Make the default volume replicated: copies of each file (the
    /// bricks, a multiple of it, form replica sets, all on this disk).
    #[arg(long)]
    replica: Option<usize>,
}

/// Runs `kiln up` with the arguments after `up`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cmd =
        UpCmd::try_parse_from(std::iter::once("kiln up".to_string()).chain(args.iter().cloned()))?;
    if cmd.bricks == 0 {
        bail!("--bricks must be at least 1");
    }
    if let Some(r) = cmd.replica {
        if r < 2 || cmd.bricks % r != 0 {
            bail!(
                "--replica {r} needs at least 2 copies and --bricks a multiple of it (--bricks is {})",
                cmd.bricks
            );
        }
    }
    let exe = std::env::current_exe().context("finding the kiln executable")?;
    let state = cmd.data_dir.join("state");
    let logs = cmd.data_dir.join("log");
    std::fs::create_dir_all(&state)?;
    std::fs::create_dir_all(&logs)?;

    let mut server_cmd = Command::new(&exe);
    server_cmd
        .arg("server")
        .arg("--state-dir")
        .arg(&state)
        .arg("--log-dir")
        .arg(&logs)
        .stdin(Stdio::null());
    // The server goes when `kiln up` goes, however it is stopped.
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        server_cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut server = server_cmd.spawn().context("starting kiln server")?;
    let result = set_up(&exe, &cmd, &mut server);
    if let Err(e) = result {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    let status = server.wait()?;
    if !status.success() {
        bail!("kiln server exited with {status}");
    }
    Ok(())
}

fn set_up(exe: &PathBuf, cmd: &UpCmd, server: &mut Child) -> anyhow::Result<()> {
    // Wait for the daemon to answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = server.try_wait()? {
            bail!(
                "kiln server exited during start-up ({st}); see {}",
                cmd.data_dir.join("log").display()
            );
        }
        if cli(exe, &["pool", "list"]).map(|o| o.0).unwrap_or(false) {
            break;
        }
        if Instant::now() > deadline {
            bail!("kiln server did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let host = local_host_name();
    let (exists, _) = cli(exe, &["volume", "info", &cmd.volume])?;
    if !exists {
        let mut args: Vec<String> = vec!["volume".into(), "create".into(), cmd.volume.clone()];
        if let Some(r) = cmd.replica {
            args.extend(["replica".to_string(), r.to_string()]);
        }
        for i in 1..=cmd.bricks {
            let dir = cmd.data_dir.join("bricks").join(format!("brick{i}"));
            args.push(format!("{host}:{}", dir.display()));
        }
        args.push("force".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = cli(exe, &refs)?;
        if !ok {
            bail!("volume create failed: {out}");
        }
    }
    let (_, info) = cli(exe, &["volume", "info", &cmd.volume])?;
    if !info.contains("Status: Started") {
        let (ok, out) = cli(exe, &["volume", "start", &cmd.volume])?;
        if !ok {
            bail!("volume start failed: {out}");
        }
    }
    println!(
        "Kiln is up: volume {vol} ({n} bricks under {dir}).\nMount it with:\n    mkdir -p /mnt/{vol} && kiln mount {host}:/{vol} /mnt/{vol}\n(or `mount -t kiln {host}:/{vol} /mnt/{vol}` once mount.kiln is installed). Ctrl-C stops the server.",
        vol = cmd.volume,
        n = cmd.bricks,
        dir = cmd.data_dir.join("bricks").display(),
    );
    Ok(())
}

/// Runs a CLI command of this executable; returns (success, output).
fn cli(exe: &PathBuf, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(exe)
        .args(args)
        .arg("--mode=script")
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// This machine's host name if it resolves, else `localhost`.
fn local_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).to_string();
        if !name.is_empty()
            && std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 24007)).is_ok()
        {
            return name;
        }
    }
    "localhost".to_string()
}
