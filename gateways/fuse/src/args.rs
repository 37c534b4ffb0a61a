//! What `kiln mount` / `mount.kiln` are asked to do: the helper's command
//! line (`mount.kiln HOST:/VOL DIR [-sfnv] [-o opts]`, as mount(8) calls it)
//! and the `-o` options, parsed into a `MountConfig`.

use std::path::PathBuf;
use std::time::Duration;

use crate::session::MountConfig;

/// A mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    /// Servers to fetch the volume spec from, in order (`host[:port]`),
    /// the spec's host first, then `backup-volfile-servers`.
    pub spec_servers: Vec<String>,
    /// The volume name.
    pub volume: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// `-o` options, one per element.
    pub options: Vec<String>,
    /// Serve in the foreground instead of daemonizing.
    pub foreground: bool,
    /// Log file (default `/var/log/kiln/<mountpoint>.log`).
    pub log_file: Option<PathBuf>,
}

/// A mount command line that cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountArgsError {
    /// Usage error.
    #[error("usage: mount.kiln HOST:/VOLUME MOUNTPOINT [-o OPTIONS]: {0}")]
    Usage(String),
    /// The `HOST:/VOLUME` source is malformed.
    #[error("bad volume source {0:?}: expected HOST:/VOLUME")]
    BadSource(String),
    /// A `-o` option has a bad value.
    #[error("bad mount option {0:?}")]
    BadOption(String),
}

/// Options mount(8) passes that mean nothing to a FUSE client.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "async",
    "relatime",
    "strictatime",
    "lazytime",
    "loud",
    "silent",
    "allow_other",
    "default_permissions",
];

/// Splits `HOST:/VOL` or `HOST:VOL` (`[v6addr]:/VOL` too).
pub fn parse_source(src: &str) -> Result<(String, String), MountArgsError> {
    let bad = || MountArgsError::BadSource(src.to_string());
    let (host, vol) = if let Some(rest) = src.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let vol = after.strip_prefix(':').ok_or_else(bad)?;
        (format!("[{addr}]"), vol)
    } else {
        let (h, v) = src.split_once(':').ok_or_else(bad)?;
        (h.to_string(), v)
    };
    let vol = vol.strip_prefix('/').unwrap_or(vol);
    if host.is_empty() || vol.is_empty() || vol.contains('/') || vol.contains(':') {
        return Err(bad());
    }
    Ok((host, vol.to_string()))
}

/// Parses the mount helper's command line: `argv` is the whole argument
/// vector, program name first, as in `mount.kiln node01:/vol1 /mnt -o ro`
/// (also what `kiln mount` passes after its subcommand name). Flags
/// `-s -f -n -v` (mount(8)'s) are accepted and ignored; `-N`/`--foreground`
/// serves in the foreground; `--log-file PATH` sets the log file.
pub fn parse_mount_helper_args<I, S>(argv: I) -> Result<MountArgs, MountArgsError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut it = argv.into_iter().map(Into::into).skip(1);
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut log_file = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| MountArgsError::Usage("-o needs a value".into()))?;
                options.extend(split_options(&v));
            }
            "-t" => {
                it.next();
            }
            "-N" | "--foreground" | "--no-daemon" => foreground = true,
            "--log-file" => {
                let v = it
                    .next()
                    .ok_or_else(|| MountArgsError::Usage("--log-file needs a value".into()))?;
                log_file = Some(PathBuf::from(v));
            }
            s if s.starts_with("--log-file=") => {
                log_file = Some(PathBuf::from(&s["--log-file=".len()..]));
            }
            s if s.starts_with("-o") && s.len() > 2 => options.extend(split_options(&s[2..])),
            s if s.starts_with('-')
                && s.len() > 1
                && s[1..].chars().all(|c| "sfnvi".contains(c)) => {}
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(MountArgsError::Usage(format!("unknown flag {s}")));
            }
            _ => positional.push(a),
        }
    }
    let [source, mountpoint]: [String; 2] = positional
        .try_into()
        .map_err(|p: Vec<String>| MountArgsError::Usage(format!("{} arguments given", p.len())))?;
    let (host, volume) = parse_source(&source)?;
    let mut spec_servers = vec![host];
    let mut rest = Vec::new();
    for o in options {
        if let Some(v) = o.strip_prefix("backup-volfile-servers=") {
            spec_servers.extend(v.split(':').filter(|s| !s.is_empty()).map(String::from));
        } else if let Some(v) = o.strip_prefix("log-file=") {
            log_file = Some(PathBuf::from(v));
        } else if o == "foreground" {
            foreground = true;
        } else if IGNORED.contains(&o.as_str()) || o.starts_with("x-") || o.starts_with("comment=")
        {
        } else {
            rest.push(o);
        }
    }
    Ok(MountArgs {
        spec_servers,
        volume,
        mountpoint: PathBuf::from(mountpoint),
        options: rest,
        foreground,
        log_file,
    })
}

fn split_options(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',').filter(|o| !o.is_empty()).map(String::from)
}

/// Client settings taken from the `-o` options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How to mount.
    pub mount: MountConfig,
    /// Extra spec servers (`backup-volfile-servers=`).
    pub backup_servers: Vec<String>,
    /// A local volume spec (JSON) instead of asking a server (`volfile=`).
    pub volfile: Option<PathBuf>,
    /// Log file (`log-file=`).
    pub log_file: Option<PathBuf>,
    /// Log level (`log-level=`): error, warn, info, debug, trace.
    pub log_level: Option<String>,
    /// Where the serving process writes its pid (`pid-file=`).
    pub pid_file: Option<PathBuf>,
    /// How long to wait for the volume to answer before failing the mount.
    pub ready_timeout: Duration,
    /// Options not understood (reported, then ignored).
    pub unknown: Vec<String>,
}

fn seconds(o: &str, v: &str) -> Result<Duration, MountArgsError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| MountArgsError::BadOption(o.to_string()))
}

/// A byte count with an optional K/M/G (or KB/MB/GB) suffix.
fn size(v: &str) -> Option<usize> {
    let v = v.trim().to_ascii_uppercase();
    let v = v.strip_suffix('B').unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'K' => (&v[..v.len() - 1], 1usize << 10),
        'M' => (&v[..v.len() - 1], 1 << 20),
        'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

fn yes_no(o: &str, v: Option<&str>) -> Result<bool, MountArgsError> {
    match v {
        None | Some("yes") | Some("on") | Some("true") | Some("1") | Some("enable") => Ok(true),
        Some("no") | Some("off") | Some("false") | Some("0") | Some("disable") => Ok(false),
        Some(_) => Err(MountArgsError::BadOption(o.to_string())),
    }
}

impl ClientOptions {
    /// Parses `-o` options (already split at commas).
    pub fn parse(options: &[String]) -> Result<ClientOptions, MountArgsError> {
        let mut c = ClientOptions {
            mount: MountConfig::default(),
            backup_servers: Vec::new(),
            volfile: None,
            log_file: None,
            log_level: None,
            pid_file: None,
            ready_timeout: Duration::from_secs(30),
            unknown: Vec::new(),
        };
        for o in options {
            let (k, v) = match o.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (o.as_str(), None),
            };
            let f = &mut c.mount.flags;
            match (k, v) {
                ("ro", None) => f.read_only = true,
                ("rw", None) => f.read_only = false,
                ("suid", None) => f.suid = true,
                ("nosuid", None) => f.suid = false,
                ("dev", None) => f.dev = true,
                ("nodev", None) => f.dev = false,
                ("exec", None) => f.noexec = false,
                ("noexec", None) => f.noexec = true,
                ("atime", None) => f.noatime = false,
                ("noatime", None) => f.noatime = true,
                ("nodiratime", None) => f.nodiratime = true,
                ("sync", None) => f.sync = true,
                ("dirsync", None) => f.dirsync = true,
                ("attribute-timeout", Some(v)) => c.mount.fs.attr_timeout = seconds(o, v)?,
                ("entry-timeout", Some(v)) => c.mount.fs.entry_timeout = seconds(o, v)?,
                ("fopen-keep-cache", v) => c.mount.fs.keep_cache = yes_no(o, v)?,
                ("kernel-writeback-cache" | "writeback-cache", v) => {
                    c.mount.fs.writeback_cache = yes_no(o, v)?
                }
                ("read-ahead-kb", Some(v)) => {
                    c.mount.read_ahead_kb = v
                        .parse()
                        .map_err(|_| MountArgsError::BadOption(o.clone()))?
                }
                ("max-write", Some(v)) => {
                    c.mount.fs.max_write = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (4096..=(16 << 20)).contains(n))
                        .ok_or_else(|| MountArgsError::BadOption(o.clone()))?
                }
                ("fuse-threads", Some(v)) => {
                    c.mount.threads = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| MountArgsError::BadOption(o.clone()))?
                }
                ("ready-timeout", Some(v)) => c.ready_timeout = seconds(o, v)?,
                ("write-behind", v) => c.mount.fs.write_behind = yes_no(o, v)?,
                ("flush-behind", v) => c.mount.fs.flush_behind = yes_no(o, v)?,
                ("direct-write-only", v) => c.mount.fs.direct_write_only = yes_no(o, v)?,
                ("write-behind-window-size", Some(v)) => {
                    c.mount.fs.write_behind_window = size(v)
                        .filter(|n| (4096..=(256 << 20)).contains(n))
                        .ok_or_else(|| MountArgsError::BadOption(o.clone()))?
                }
                ("pid-file", Some(v)) => c.pid_file = Some(PathBuf::from(v)),
                ("backup-volfile-servers", Some(v)) => c
                    .backup_servers
                    .extend(v.split(':').filter(|s| !s.is_empty()).map(String::from)),
                ("volfile", Some(v)) => c.volfile = Some(PathBuf::from(v)),
                ("log-file", Some(v)) => c.log_file = Some(PathBuf::from(v)),
                ("log-level", Some(v)) => c.log_level = Some(v.to_ascii_lowercase()),
                _ if IGNORED.contains(&o.as_str())
                    || o.starts_with("x-")
                    || o.starts_with("comment=")
                    || o == "foreground" => {}
                _ => c.unknown.push(o.clone()),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn helper_command_line() {
        let a = parse_mount_helper_args(argv(
            "mount.kiln node01:/vol1 /mnt -o rw,_netdev,backup-volfile-servers=node02:node03,log-file=/tmp/l.log,ro,noatime",
        ))
        .unwrap();
        assert_eq!(a.spec_servers, ["node01", "node02", "node03"]);
        assert_eq!(a.volume, "vol1");
        assert_eq!(a.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(a.options, ["ro", "noatime"]);
        assert_eq!(a.log_file, Some(PathBuf::from("/tmp/l.log")));
        assert!(!a.foreground);

        let b =
            parse_mount_helper_args(argv("mount.kiln -sfnv -o ro -t kiln node01:vol2 /mnt/x -N"))
                .unwrap();
        assert_eq!(b.volume, "vol2");
        assert!(b.foreground);
        assert_eq!(b.options, ["ro"]);
    }

    #[test]
    fn bad_command_lines() {
        assert!(matches!(
            parse_mount_helper_args(argv("mount.kiln node01:/vol1")),
            Err(MountArgsError::Usage(_))
        ));
        assert!(matches!(
            parse_mount_helper_args(argv("mount.kiln node01 /mnt")),
            Err(MountArgsError::BadSource(_))
        ));
        assert!(matches!(
            parse_mount_helper_args(argv("mount.kiln n:/a/b /mnt")),
            Err(MountArgsError::BadSource(_))
        ));
        assert!(parse_mount_helper_args(argv("mount.kiln n:/v /mnt -x")).is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("h:/v").unwrap(), ("h".into(), "v".into()));
        assert_eq!(parse_source("h:v").unwrap(), ("h".into(), "v".into()));
        assert_eq!(
            parse_source("[::1]:/v").unwrap(),
            ("[::1]".into(), "v".into())
        );
        assert!(parse_source(":/v").is_err());
        assert!(parse_source("h:/").is_err());
    }

    #[test]
    fn client_options() {
        let o: Vec<String> = [
            "ro",
            "attribute-timeout=0.5",
            "fopen-keep-cache=no",
            "volfile=/s.json",
            "frobnicate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = ClientOptions::parse(&o).unwrap();
        assert!(c.mount.flags.read_only);
        assert_eq!(c.mount.fs.attr_timeout, Duration::from_millis(500));
        assert!(!c.mount.fs.keep_cache);
        assert_eq!(c.volfile, Some(PathBuf::from("/s.json")));
        assert_eq!(c.unknown, ["frobnicate"]);
        assert!(ClientOptions::parse(&["entry-timeout=x".to_string()]).is_err());
        let wb = ClientOptions::parse(&[
            "write-behind=off".to_string(),
            "write-behind-window-size=2MB".to_string(),
            "flush-behind=off".to_string(),
            "direct-write-only=off".to_string(),
        ])
        .unwrap();
        assert!(!wb.mount.fs.direct_write_only);
        assert!(!wb.mount.fs.write_behind);
        assert!(!wb.mount.fs.flush_behind);
        assert!(ClientOptions::parse(&[]).unwrap().mount.fs.flush_behind);
        assert_eq!(wb.mount.fs.write_behind_window, 2 << 20);
        assert_eq!(size("512k"), Some(512 << 10));
        assert_eq!(size("4096"), Some(4096));
        assert_eq!(size("x"), None);
    }
}
