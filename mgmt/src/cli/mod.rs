//! The `kiln` admin CLI (`peer`, `pool`, `volume`): parses the command line,
//! asks for confirmation where GlusterFS does, sends the command to a daemon
//! (local socket, else 127.0.0.1:24007, or `--remote-host`) and prints the
//! answer.

pub(crate) mod output;
pub(crate) mod parse;

use bytes::Bytes;
use std::io::Write;
use std::time::Duration;

use crate::client::{connect_local, connect_tcp};
use crate::error::MgmtError;
use crate::proto::{CliRequest, MgmtReply, MgmtRequest};
use crate::wire::Conn;
use parse::{GlobalOpts, Parsed};

/// How long the CLI waits for a command's answer.
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
const DELETE_PROMPT: &str =
    "Deleting volume will erase all information about the volume. Do you want to continue? (y/n) ";

/// Runs one CLI command (`args` are the words after `kiln`) and returns the
/// process exit code: 0 on success, 1 on failure.
pub async fn run_cli(args: Vec<String>) -> i32 {
    let (opts, req) = match parse::parse(&args) {
        Ok(Parsed::Run(o, r)) => (o, r),
        Ok(Parsed::Help) => {
            print!("{}", parse::help_text());
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let CliRequest::VolumeDelete { .. } = req {
        if !(opts.yes || opts.script || confirm(DELETE_PROMPT).await) {
            return 1;
        }
    }
    let r = execute(&opts, req).await;
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    let _ = std::io::stdout().flush();
    r.code
}

/// Sends the command and renders the answer (no printing, for tests).
pub(crate) async fn execute(opts: &GlobalOpts, req: CliRequest) -> output::Rendered {
    let mut conn = match connect(opts).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "CLI connection failed");
            let target = opts
                .remote_host
                .as_deref()
                .unwrap_or("the local kiln server");
            return output::failed(&format!(
                "Connection failed. Please check if kiln server is running on {target} ({e})."
            ));
        }
    };
    let answer = conn
        .call(&MgmtRequest::Cli(req), Bytes::new(), CLI_TIMEOUT)
        .await;
    let reply = match answer {
        Ok((MgmtReply::Cli(r), _)) => r,
        Ok((MgmtReply::Error(e), _)) => return output::failed(&e),
        Ok((other, _)) => return output::failed(&format!("unexpected answer: {other:?}")),
        Err(e) => return output::failed(&e.to_string()),
    };
    if opts.json {
        output::json(&reply)
    } else {
        output::text(&reply)
    }
}

async fn connect(opts: &GlobalOpts) -> Result<Conn, MgmtError> {
    if let Some(host) = &opts.remote_host {
        return connect_tcp(host).await.map(|(c, _, _)| c);
    }
    match connect_local().await {
        Ok(c) => Ok(c),
        Err(local) => {
            tracing::debug!(error = %local, "local socket unavailable, trying TCP");
            connect_tcp("127.0.0.1").await.map(|(c, _, _)| c)
        }
    }
}

/// Prints `prompt` and reads a y/n answer from stdin.
async fn confirm(prompt: &str) -> bool {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let line = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map(|_| s)
    })
    .await;
    matches!(line, Ok(Ok(s)) if matches!(s.trim(), "y" | "Y" | "yes" | "Yes"))
}
