//! What each volume exports and to whom, from its options: `/VOL` (unless
//! `nfs.export-volumes off`), the sub-directories listed in `nfs.export-dir`
//! (`/sub/dir` or `/sub/dir(10.0.0.0/8|192.168.1.5)`), the address rules
//! `nfs.rpc-auth-allow` / `nfs.rpc-auth-reject` (addresses, CIDR netmasks or
//! `*`; reject wins), `server.root-squash` and `nfs.volume-access`.

use std::net::IpAddr;

use kiln_core::graph::VolumeSpec;

/// One address rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrRule {
    /// `*` / `all`: every address.
    Any,
    /// An address with a prefix length (a plain address has the full length).
    Net {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
}

impl AddrRule {
    /// Parses `*`, `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`; `None` otherwise.
    pub fn parse(s: &str) -> Option<AddrRule> {
        let s = s.trim();
        if s == "*" || s.eq_ignore_ascii_case("all") {
            return Some(AddrRule::Any);
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= full)?,
            None => full,
        };
        Some(AddrRule::Net { addr, prefix })
    }

    /// True when `ip` matches.
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            AddrRule::Any => true,
            AddrRule::Net { addr, prefix } => match (canonical(*addr), ip) {
                (IpAddr::V4(n), IpAddr::V4(i)) => {
                    let mask = if *prefix == 0 {
                        0
                    } else {
                        u32::MAX << (32 - *prefix as u32)
                    };
                    u32::from(n) & mask == u32::from(i) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(i)) => {
                    let mask = if *prefix == 0 {
                        0
                    } else {
                        u128::MAX << (128 - *prefix as u32)
                    };
                    u128::from(n) & mask == u128::from(i) & mask
                }
                _ => false,
            },
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parses a comma-separated rule list, skipping (and logging) bad entries.
pub fn parse_rules(list: &str, option: &str) -> Vec<AddrRule> {
    list.split([',', '|'])
        .filter(|s| !s.trim().is_empty())
        .filter_map(|s| {
            let r = AddrRule::parse(s);
            if r.is_none() {
                tracing::warn!(
                    option,
                    entry = s.trim(),
                    "nfs: ignoring an address rule that is not an address, netmask or *"
                );
            }
            r
        })
        .collect()
}

/// An exported sub-directory of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDir {
    /// Path inside the volume, starting with `/`, no trailing `/`.
    pub path: String,
    /// Hosts allowed to mount it (`None`: the volume's rules).
    pub hosts: Option<Vec<AddrRule>>,
}

/// A volume's export settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// The volume root is exported as `/VOL`.
    pub export_volume: bool,
    /// Exported sub-directories.
    pub dirs: Vec<ExportDir>,
    /// `nfs.rpc-auth-allow` (empty = everyone).
    pub allow: Vec<AddrRule>,
    /// `nfs.rpc-auth-reject`.
    pub reject: Vec<AddrRule>,
    /// `server.root-squash`.
    pub root_squash: bool,
    /// `nfs.volume-access read-only`.
    pub read_only: bool,
}

fn on(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "on" | "yes" | "true" | "enable" | "1"
    )
}

impl ExportOptions {
    /// Reads the options of a volume spec.
    pub fn from_spec(spec: &VolumeSpec) -> ExportOptions {
        let allow = spec.option("nfs.rpc-auth-allow", "");
        ExportOptions {
            export_volume: on(spec.option("nfs.export-volumes", "on")),
            dirs: parse_export_dirs(spec.option("nfs.export-dir", "")),
            allow: if allow.trim().is_empty() {
                vec![AddrRule::Any]
            } else {
                parse_rules(allow, "nfs.rpc-auth-allow")
            },
            reject: parse_rules(
                spec.option("nfs.rpc-auth-reject", ""),
                "nfs.rpc-auth-reject",
            ),
            root_squash: on(spec.option("server.root-squash", "off")),
            read_only: spec.option("nfs.volume-access", "read-write").trim() == "read-only",
        }
    }

    /// May `ip` use this volume at all?
    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.reject.iter().any(|r| r.matches(ip)) && self.allow.iter().any(|r| r.matches(ip))
    }

    /// May `ip` mount sub-directory `dir` (an entry of `dirs`)?
    pub fn allows_dir(&self, dir: &ExportDir, ip: IpAddr) -> bool {
        self.allows(ip)
            && dir
                .hosts
                .as_ref()
                .is_none_or(|h| h.iter().any(|r| r.matches(ip)))
    }
}

/// Parses `nfs.export-dir`: `/a,/b/c(10.0.0.0/8|1.2.3.4)`.
pub fn parse_export_dirs(v: &str) -> Vec<ExportDir> {
    let mut out = Vec::new();
    // Commas inside parentheses separate nothing, so split by hand.
    let mut depth = 0;
    let mut cur = String::new();
    let mut items = Vec::new();
    for c in v.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    items.push(cur);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (path, hosts) = match item.split_once('(') {
            Some((p, h)) => (
                p.trim(),
                Some(parse_rules(h.trim_end_matches(')'), "nfs.export-dir")),
            ),
            None => (item, None),
        };
        let path = normalize(path);
        if path == "/" {
            continue;
        }
        out.push(ExportDir { path, hosts });
    }
    out
}

/// `a//b/` -> `/a/b`.
pub fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_dirs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = AddrRule::parse("10.1.0.0/16").unwrap();
        assert!(r.matches(ip("10.1.200.3")) && !r.matches(ip("10.2.0.1")));
        assert!(r.matches(ip("::ffff:10.1.0.9")));
        assert!(AddrRule::parse("*").unwrap().matches(ip("::1")));
        assert!(AddrRule::parse("host.example").is_none());
        assert!(AddrRule::parse("1.2.3.4/33").is_none());
        let d = parse_export_dirs("/a/b/, /c(127.0.0.1|10.0.0.0/8),x");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].path, "/a/b");
        assert_eq!(d[1].hosts.as_ref().unwrap().len(), 2);
        assert_eq!(d[2].path, "/x");
        let o = ExportOptions {
            export_volume: true,
            dirs: d,
            allow: vec![AddrRule::Any],
            reject: parse_rules("127.0.0.2", "t"),
            root_squash: false,
            read_only: false,
        };
        assert!(o.allows(ip("127.0.0.1")) && !o.allows(ip("127.0.0.2")));
        assert!(
            o.allows_dir(&o.dirs[1], ip("10.9.9.9"))
                && !o.allows_dir(&o.dirs[1], ip("192.168.0.1"))
        );
    }
}
