//! `kiln`: one executable for the management daemon (`server`), brick
//! processes (`brick`), the NFS gateway (`nfs`), the FUSE client (`mount`, or
//! `mount.kiln` by argv[0]), the one-command single-server setup (`up`),
//! `bench`, and the CLI.

mod bench;
mod bench_nfs;
mod logging;
mod nfs;
mod shd;
mod up;

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// `kiln brick`: serve one brick (started by `kiln server`).
#[derive(Parser, Debug)]
#[command(name = "kiln brick")]
struct BrickCmd {
    /// Volume name.
    #[arg(long)]
    volume: String,
    /// Volume id (UUID).
    #[arg(long)]
    volume_id: String,
    /// Address and port to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Log file.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// The brick, `HOST:/PATH`.
    brick: String,
}

/// `kiln server`: the management daemon, in the foreground.
#[derive(Parser, Debug)]
#[command(name = "kiln server")]
struct ServerCmd {
    /// Bind every port of this server (management, bricks, gateways) to ADDR.
    #[arg(long)]
    listen: Option<IpAddr>,
    /// State directory (config, Raft log, pid files).
    #[arg(long, default_value = "/var/lib/kiln")]
    state_dir: PathBuf,
    /// Log directory (bricks log under `bricks/`).
    #[arg(long, default_value = "/var/log/kiln")]
    log_dir: PathBuf,
}

/// Buffers up to this size come from the allocator's heap, not fresh mmaps.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the top of the heap instead of returned at once.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Every kiln process moves data in buffers of up to 16 MiB (1 MiB NFS
/// records, brick frames, FUSE writes). With glibc's defaults each one is a
/// fresh mmap, faulted in and zeroed by the kernel page by page, then
/// unmapped; the dynamic threshold only adapts after a while, so a new
/// process writes at half speed until it does. Fixed thresholds keep such
/// buffers in the heap, reused from the first request on.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

fn main() {
    tune_allocator();
    let argv: Vec<String> = std::env::args().collect();
    let prog = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let code = if prog == "mount.kiln" {
        run_mount_helper(&argv)
    } else {
        dispatch(&argv[1..])
    };
    std::process::exit(code);
}

fn dispatch(args: &[String]) -> i32 {
    let Some(cmd) = args.first().map(String::as_str) else {
        eprintln!("{}", USAGE);
        return 1;
    };
    let rest = &args[1..];
    let result = match cmd {
        "server" => run_server(rest),
        "brick" => run_brick(rest),
        "nfs" => nfs::run(rest),
        "shd" => shd::run(rest),
        "mount" => return run_mount(rest),
        "up" => up::run(rest),
        "bench" => bench::run(rest),
        "bench-nfs" => bench_nfs::run(rest),
        "help" | "--help" | "-h" => {
            println!("{}", USAGE);
            Ok(())
        }
        "--version" | "-V" => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => return run_cli(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln {cmd}: {e:#}");
            1
        }
    }
}

const USAGE: &str = "usage: kiln <command> ...
  server [--listen ADDR] [--state-dir DIR] [--log-dir DIR]   run the management daemon
  up [--data-dir DIR] [--bricks N] [--volume NAME]           a single-server Kiln with a default volume
  mount HOST:/VOL DIR [-o OPTIONS]                           mount a volume with FUSE
  nfs [--listen ADDR] [--mgmt HOST[:PORT]] [--volumes V1,V2] NFSv3 gateway (kiln server runs it)
  shd --mgmt HOST[:PORT] --volumes V1,V2 --bricks B1,B2 --control SOCK   self-heal daemon (kiln server runs it)
  peer probe|detach|status HOST ; pool list
  volume create|start|stop|delete|info|status|set|heal|add-brick ...
  bench MOUNT [--local DIR]                                  Kiln vs the local disk
  bench-nfs [--size-mib N] [--files N] [--rounds N]          Kiln's NFS gateway vs nfs-ganesha
global CLI options: --remote-host HOST  --json  --mode=script";

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run_server(args: &[String]) -> anyhow::Result<()> {
    let cmd = ServerCmd::try_parse_from(
        std::iter::once("kiln server".to_string()).chain(args.iter().cloned()),
    )?;
    let server_args = kiln_mgmt::ServerArgs {
        listen: cmd.listen,
        state_dir: cmd.state_dir,
        log_dir: cmd.log_dir,
        ..Default::default()
    };
    runtime()?.block_on(kiln_mgmt::run_server(server_args))
}

fn run_brick(args: &[String]) -> anyhow::Result<()> {
    let cmd = BrickCmd::try_parse_from(
        std::iter::once("kiln brick".to_string()).chain(args.iter().cloned()),
    )?;
    let _guard = logging::init(cmd.log_file.as_deref())?;
    let (_host, path) = cmd
        .brick
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("brick must be HOST:/PATH, got {}", cmd.brick))?;
    let config = kiln_core::brick::BrickConfig {
        volume: cmd.volume,
        volume_id: cmd.volume_id,
        label: cmd.brick.clone(),
        path: PathBuf::from(path),
        listen: cmd.listen,
    };
    tracing::info!(brick = %cmd.brick, listen = %cmd.listen, "brick starting");
    runtime()?.block_on(kiln_core::brick::serve(config))?;
    Ok(())
}

fn run_mount(args: &[String]) -> i32 {
    let argv = std::iter::once("kiln mount".to_string()).chain(args.iter().cloned());
    let margs = match kiln_fuse::parse_mount_helper_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln mount: {e:#}");
            return 1;
        }
    };
    match kiln_fuse::mount_main(margs) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln mount: {e:#}");
            1
        }
    }
}

fn run_mount_helper(args: &[String]) -> i32 {
    let margs = match kiln_fuse::parse_mount_helper_args(args.iter().cloned()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mount.kiln: {e:#}");
            return 1;
        }
    };
    match kiln_fuse::mount_main(margs) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mount.kiln: {e:#}");
            1
        }
    }
}

fn run_cli(args: &[String]) -> i32 {
    match runtime() {
        Ok(rt) => rt.block_on(kiln_mgmt::run_cli(args.to_vec())),
        Err(e) => {
            eprintln!("kiln: {e}");
            1
        }
    }
}
