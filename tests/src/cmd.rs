//! Running a command to completion with a deadline and capturing its output.
//! Output goes to temporary files, not pipes, so a command that leaves a
//! daemon behind (`kiln mount`) cannot keep the harness waiting for EOF.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default deadline for one command (CLI call, shell snippet).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished (or timed-out) command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `None` if killed by a signal or by the deadline.
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// True if the harness killed it at the deadline.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// True if it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output itself if it exited with code 0, else an error that shows
    /// the command, its exit status and both streams.
    pub fn ok(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            bail!("command failed: {self}")
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.code, self.timed_out) {
            (_, true) => format!("timed out after {:?}", self.elapsed),
            (Some(c), _) => format!("exit {c}"),
            (None, _) => "killed by a signal".to_string(),
        };
        write!(
            f,
            "`{}`: {status}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn scratch_file(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("kt-out-{}-{n}.{tag}", std::process::id()))
}

/// Runs `cmd` with `stdin` as its standard input (empty if `None`), waits at
/// most `timeout`, and returns its exit status and output. A command still
/// running at the deadline is killed with SIGKILL.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let command = describe(&cmd);
    let out_path = scratch_file("out");
    let err_path = scratch_file("err");
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {command}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits without reading its input is not an error.
        let _ = pipe.write_all(input);
    }
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        std::thread::sleep(poll_interval(start.elapsed()));
    };
    let elapsed = start.elapsed();
    let stdout = read_and_remove(&out_path);
    let stderr = read_and_remove(&err_path);
    Ok(Output {
        command,
        code: if timed_out { None } else { status.code() },
        stdout,
        stderr,
        timed_out,
        elapsed,
    })
}

/// Short polls first (most commands finish in milliseconds), then longer.
pub(crate) fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(100) {
        Duration::from_millis(2)
    } else if elapsed < Duration::from_secs(2) {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(100)
    }
}

fn read_and_remove(path: &PathBuf) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut s);
    }
    let _ = std::fs::remove_file(path);
    String::from_utf8_lossy(&s).into_owned()
}

/// The command line as a shell would show it (for messages only).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command from the root namespace and fails unless it exits 0.
pub(crate) fn must(program: &str, args: &[&str]) -> Result<Output> {
    let mut c = Command::new(program);
    c.args(args);
    run(c, None, DEFAULT_TIMEOUT)?.ok()
}
