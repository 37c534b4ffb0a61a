//! Log files of the management daemon: `LOG_DIR/kiln-server.log` through
//! tracing-appender (brick processes write their own under `LOG_DIR/bricks/`).

use std::path::Path;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Installs the daemon's subscriber: everything at `RUST_LOG` (default
/// `info`) into `kiln-server.log`, warnings also on stderr. Returns the guard
/// that flushes the file on drop, or `None` if a subscriber was already set
/// (then that one is used).
pub(crate) fn init(log_dir: &Path) -> std::io::Result<Option<WorkerGuard>> {
    std::fs::create_dir_all(log_dir.join("bricks"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("kiln-server.log"))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = fmt::layer()
        .with_ansi(false)
        .with_writer(writer)
        .with_filter(filter);
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    match tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
    {
        Ok(()) => Ok(Some(guard)),
        Err(_) => Ok(None),
    }
}
