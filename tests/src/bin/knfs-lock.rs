//! `knfs-lock PATH MODE START LEN WAIT HOLD`: an fcntl(2) byte-range lock
//! for the kernel NFS client guest (`kiln_tests::knfs`, busybox has no
//! fcntl tool) and for FUSE-side holders. MODE `r` or `w` takes a lock
//! (F_SETLKW when WAIT is 1, else F_SETLK), prints `LOCKED <ms waited>`,
//! holds it HOLD seconds (or, with HOLD `stdin`, until stdin closes or a
//! line arrives), unlocks and prints `UNLOCKED`; a refusal prints `DENIED
//! <errno name>` and exits 1. MODE `t` asks F_GETLK for a write lock and
//! prints `FREE` or `HELD <pid> <start> <len> <r|w>`.

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn flock(kind: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain old data; zero is a valid bit pattern.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// One output line; a reader that went away is not an error.
fn out(line: &str) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 7 {
        eprintln!("usage: knfs-lock PATH r|w|t START LEN WAIT(0|1) HOLD(secs|stdin)");
        std::process::exit(2);
    }
    let num = |s: &str| s.parse::<i64>().unwrap_or(0);
    let (start, len, wait) = (num(&a[3]), num(&a[4]), a[5] == "1");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a[1])
    {
        Ok(f) => f,
        Err(e) => {
            out(&format!("OPENFAIL {e}"));
            std::process::exit(1);
        }
    };
    let fd = file.as_raw_fd();
    if a[2] == "t" {
        let mut fl = flock(libc::F_WRLCK, start, len);
        // SAFETY: fd is open; fl is a valid flock.
        if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) } != 0 {
            out(&format!("DENIED {}", std::io::Error::last_os_error()));
            std::process::exit(1);
        }
        if fl.l_type == libc::F_UNLCK as i16 {
            out("FREE");
        } else {
            let k = if fl.l_type == libc::F_WRLCK as i16 {
                "w"
            } else {
                "r"
            };
            out(&format!(
                "HELD {} {} {} {k}",
                fl.l_pid, fl.l_start, fl.l_len
            ));
        }
        return;
    }
    let kind = if a[2] == "r" {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    let fl = flock(kind, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    let t0 = Instant::now();
    // SAFETY: fd is open; fl is a valid flock.
    if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
        let e = std::io::Error::last_os_error();
        let name = match e.raw_os_error() {
            Some(libc::EAGAIN) => "EAGAIN".to_string(),
            Some(libc::EACCES) => "EACCES".to_string(),
            Some(libc::ENOLCK) => "ENOLCK".to_string(),
            _ => e.to_string(),
        };
        out(&format!("DENIED {name}"));
        std::process::exit(1);
    }
    out(&format!("LOCKED {}", t0.elapsed().as_millis()));
    if a[6] == "stdin" {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    } else {
        std::thread::sleep(Duration::from_secs(num(&a[6]).max(0) as u64));
    }
    let ul = flock(libc::F_UNLCK, start, len);
    // SAFETY: fd is open; ul is a valid flock.
    unsafe { libc::fcntl(fd, libc::F_SETLK, &ul) };
    out("UNLOCKED");
}
