//! `kiln shd`: the self-heal daemon process of a server (started by
//! `kiln server` for the started replicated volumes with a brick there).
//! Crawls the pending indices of the given local bricks and heals; answers
//! heal commands on its control socket.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// `kiln shd`: heal the local bricks of replicated volumes.
#[derive(Parser, Debug)]
#[command(name = "kiln shd")]
struct ShdCmd {
    /// Management servers to fetch volume specs from, `HOST[:PORT]`.
    #[arg(long, value_delimiter = ',', required = true)]
    mgmt: Vec<String>,
    /// Volumes to heal (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    volumes: Vec<String>,
    /// This server's bricks, `HOST:/PATH` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    bricks: Vec<String>,
    /// Control socket to answer heal commands on.
    #[arg(long)]
    control: PathBuf,
    /// Seconds between two index crawls of a brick
    /// (`KILN_SHD_INTERVAL` overrides the default).
    #[arg(long, env = "KILN_SHD_INTERVAL", default_value_t = 5)]
    interval: u64,
    /// Log file (default: stderr).
    #[arg(long)]
    log_file: Option<PathBuf>,
}

/// Runs `kiln shd ARGS` in the foreground.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cmd = ShdCmd::try_parse_from(
        std::iter::once("kiln shd".to_string()).chain(args.iter().cloned()),
    )?;
    let _guard = crate::logging::init(cmd.log_file.as_deref())?;
    tracing::info!(volumes = ?cmd.volumes, bricks = ?cmd.bricks, "self-heal daemon starting");
    let args = kiln_mgmt::ShdArgs {
        mgmt: cmd.mgmt,
        volumes: cmd.volumes,
        bricks: cmd.bricks,
        control: cmd.control,
        interval: Duration::from_secs(cmd.interval.max(1)),
    };
    crate::runtime()?.block_on(kiln_mgmt::run_shd(args))
}
