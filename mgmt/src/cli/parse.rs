//! The CLI grammar, GlusterFS style: global flags (`--remote-host HOST`,
//! `--json`, `--mode=script`, `--yes`) anywhere, then positional words
//! (`volume create NAME [replica N] ... BRICK... [force]`).

use crate::proto::{CliRequest, CreateArgs, HealOp};

/// Flags that apply to every command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GlobalOpts {
    /// `--remote-host HOST[:PORT]`: talk to that server's daemon over TCP.
    pub(crate) remote_host: Option<String>,
    /// `--json`: machine-readable output.
    pub(crate) json: bool,
    /// `--mode=script`: never prompt.
    pub(crate) script: bool,
    /// `--yes`: answer yes to prompts.
    pub(crate) yes: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Run a command.
    Run(GlobalOpts, CliRequest),
    /// Print help (exit 0).
    Help,
}

/// Every command's usage line.
pub(crate) const USAGE: &[&str] = &[
    "peer probe <HOSTNAME>",
    "peer detach <HOSTNAME> [force]",
    "peer status",
    "pool list",
    "volume create <NEW-VOLNAME> [stripe <COUNT>] [replica <COUNT>] [disperse <COUNT>] [transport <tcp|rdma|tcp,rdma>] <NEW-BRICK> ... [force]",
    "volume start <VOLNAME> [force]",
    "volume stop <VOLNAME> [force]",
    "volume delete <VOLNAME>",
    "volume info [all|<VOLNAME>]",
    "volume status [all|<VOLNAME>] [detail]",
    "volume set <VOLNAME> <KEY> <VALUE>",
    "volume reset <VOLNAME> [option] [force]",
    "volume heal <VOLNAME> [full | statistics [heal-count] | info [split-brain | healed | heal-failed] | split-brain {bigger-file <FILE> | latest-mtime <FILE> | source-brick <HOSTNAME:BRICKNAME> [<FILE>]}]",
    "volume add-brick <VOLNAME> [replica <COUNT>] <NEW-BRICK> ... [force]",
];

fn usage(prefix: &str) -> String {
    let line = USAGE
        .iter()
        .find(|u| u.starts_with(prefix))
        .copied()
        .unwrap_or(prefix);
    format!("Usage: {line}")
}

/// The help text.
pub(crate) fn help_text() -> String {
    let mut s = String::from(
        "Usage: kiln [--remote-host HOST] [--json] [--mode=script] [--yes] COMMAND\n\nCommands:\n",
    );
    for u in USAGE {
        s.push_str("  ");
        s.push_str(u);
        s.push('\n');
    }
    s
}

/// Parses the words after `kiln`. The error is the message to print.
pub(crate) fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut opts = GlobalOpts::default();
    let mut words: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "--yes" => opts.yes = true,
            "--mode=script" => opts.script = true,
            "--mode" => match it.next().map(String::as_str) {
                Some("script") => opts.script = true,
                other => return Err(format!("unknown mode {}", other.unwrap_or(""))),
            },
            "--remote-host" => match it.next() {
                Some(h) if !h.is_empty() => opts.remote_host = Some(h.clone()),
                _ => return Err("--remote-host needs a host name".into()),
            },
            "--help" | "-h" => return Ok(Parsed::Help),
            s if s.starts_with("--remote-host=") => {
                let h = &s["--remote-host=".len()..];
                if h.is_empty() {
                    return Err("--remote-host needs a host name".into());
                }
                opts.remote_host = Some(h.to_string());
            }
            s if s.starts_with("--mode=") => return Err(format!("unknown mode {}", &s[7..])),
            s if s.starts_with("--") => return Err(format!("unrecognized option {s}")),
            s => words.push(s),
        }
    }
    let req = match words.as_slice() {
        [] | ["help"] | [_, "help"] => return Ok(Parsed::Help),
        ["peer", rest @ ..] => peer(rest)?,
        ["pool", "list"] => CliRequest::PoolList,
        ["pool", ..] => return Err(usage("pool list")),
        ["volume", rest @ ..] => volume(rest)?,
        [w, ..] => return Err(format!("unrecognized word: {w} (position 0)")),
    };
    Ok(Parsed::Run(opts, req))
}

fn peer(w: &[&str]) -> Result<CliRequest, String> {
    Ok(match w {
        ["probe", host] => CliRequest::PeerProbe {
            host: host.to_string(),
        },
        ["probe", ..] => return Err(usage("peer probe")),
        ["detach", host] => CliRequest::PeerDetach {
            host: host.to_string(),
            force: false,
        },
        ["detach", host, "force"] => CliRequest::PeerDetach {
            host: host.to_string(),
            force: true,
        },
        ["detach", ..] => return Err(usage("peer detach")),
        ["status"] => CliRequest::PeerStatus,
        ["status", ..] => return Err(usage("peer status")),
        [w, ..] => return Err(format!("unrecognized word: {w} (position 1)")),
        [] => return Err(usage("peer")),
    })
}

fn volume(w: &[&str]) -> Result<CliRequest, String> {
    let name = |s: &str| s.to_string();
    Ok(match w {
        ["create", rest @ ..] => create(rest)?,
        ["start", v] => CliRequest::VolumeStart {
            name: name(v),
            force: false,
        },
        ["start", v, "force"] => CliRequest::VolumeStart {
            name: name(v),
            force: true,
        },
        ["start", ..] => return Err(usage("volume start")),
        ["stop", v] => CliRequest::VolumeStop {
            name: name(v),
            force: false,
        },
        ["stop", v, "force"] => CliRequest::VolumeStop {
            name: name(v),
            force: true,
        },
        ["stop", ..] => return Err(usage("volume stop")),
        ["delete", v] => CliRequest::VolumeDelete { name: name(v) },
        ["delete", ..] => return Err(usage("volume delete")),
        ["info"] | ["info", "all"] => CliRequest::VolumeInfo { name: None },
        ["info", v] => CliRequest::VolumeInfo {
            name: Some(name(v)),
        },
        ["info", ..] => return Err(usage("volume info")),
        ["status"] | ["status", "all"] => CliRequest::VolumeStatus {
            name: None,
            detail: false,
        },
        ["status", "detail"] | ["status", "all", "detail"] => CliRequest::VolumeStatus {
            name: None,
            detail: true,
        },
        ["status", v] => CliRequest::VolumeStatus {
            name: Some(name(v)),
            detail: false,
        },
        ["status", v, "detail"] => CliRequest::VolumeStatus {
            name: Some(name(v)),
            detail: true,
        },
        ["status", ..] => return Err(usage("volume status")),
        ["set", v, k, val] => CliRequest::VolumeSet {
            name: name(v),
            key: name(k),
            value: name(val),
        },
        ["set", ..] => return Err(usage("volume set")),
        ["reset", v] => CliRequest::VolumeReset {
            name: name(v),
            key: None,
            force: false,
        },
        ["reset", v, "force"] => CliRequest::VolumeReset {
            name: name(v),
            key: None,
            force: true,
        },
        ["reset", v, k] => CliRequest::VolumeReset {
            name: name(v),
            key: Some(name(k)),
            force: false,
        },
        ["reset", v, k, "force"] => CliRequest::VolumeReset {
            name: name(v),
            key: Some(name(k)),
            force: true,
        },
        ["reset", ..] => return Err(usage("volume reset")),
        ["heal", v, rest @ ..] => CliRequest::VolumeHeal {
            name: name(v),
            op: heal_op(rest)?,
        },
        ["heal", ..] => return Err(usage("volume heal")),
        ["add-brick", v, rest @ ..] => add_brick(v, rest)?,
        ["add-brick", ..] => return Err(usage("volume add-brick")),
        [w, ..] => return Err(format!("unrecognized word: {w} (position 1)")),
        [] => return Err(usage("volume")),
    })
}

fn heal_op(w: &[&str]) -> Result<HealOp, String> {
    let s = |x: &str| x.to_string();
    Ok(match w {
        [] => HealOp::Index,
        ["full"] => HealOp::Full,
        ["info"] => HealOp::Info { split_brain: false },
        ["info", "split-brain"] => HealOp::Info { split_brain: true },
        ["info", "healed"] => HealOp::InfoHealed,
        ["info", "heal-failed"] => HealOp::InfoHealFailed,
        ["statistics"] => HealOp::Statistics,
        ["statistics", "heal-count"] => HealOp::HealCount,
        ["split-brain", "bigger-file", f] => HealOp::BiggerFile(s(f)),
        ["split-brain", "latest-mtime", f] => HealOp::LatestMtime(s(f)),
        ["split-brain", "source-brick", b] if b.contains(':') => HealOp::SourceBrick {
            brick: s(b),
            file: None,
        },
        ["split-brain", "source-brick", b, f] if b.contains(':') => HealOp::SourceBrick {
            brick: s(b),
            file: Some(s(f)),
        },
        _ => return Err(usage("volume heal")),
    })
}

fn add_brick(v: &str, w: &[&str]) -> Result<CliRequest, String> {
    let (replica, rest) = match w {
        ["replica", n, rest @ ..] => (Some(count("replica", Some(n))?), rest),
        _ => (None, w),
    };
    let (bricks, force) = match rest {
        [b @ .., "force"] => (b, true),
        b => (b, false),
    };
    if bricks.is_empty() || bricks.iter().any(|b| !b.contains(':')) {
        return Err(usage("volume add-brick"));
    }
    Ok(CliRequest::VolumeAddBrick {
        name: v.to_string(),
        replica,
        bricks: bricks.iter().map(|b| b.to_string()).collect(),
        force,
    })
}

fn count(word: &str, v: Option<&&str>) -> Result<u32, String> {
    v.and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{word} count must be a positive number"))
}

fn create(w: &[&str]) -> Result<CliRequest, String> {
    let Some((name, mut rest)) = w.split_first() else {
        return Err(usage("volume create"));
    };
    let mut a = CreateArgs {
        name: name.to_string(),
        ..CreateArgs::default()
    };
    if let Some((&"force", head)) = rest.split_last() {
        a.force = true;
        rest = head;
    }
    let mut i = 0;
    while i < rest.len() {
        let (word, val) = (rest[i], rest.get(i + 1));
        let slot = match word {
            "replica" => &mut a.replica,
            "stripe" => &mut a.stripe,
            "disperse" => &mut a.disperse,
            "transport" => {
                let t = val.ok_or_else(|| usage("volume create"))?;
                if a.transport.replace(t.to_string()).is_some() {
                    return Err("transport given twice".into());
                }
                i += 2;
                continue;
            }
            _ => break,
        };
        if slot.replace(count(word, val)?).is_some() {
            return Err(format!("{word} given twice"));
        }
        i += 2;
    }
    a.bricks = rest[i..].iter().map(|s| s.to_string()).collect();
    if a.bricks.is_empty() {
        return Err(usage("volume create"));
    }
    if let Some(b) = a
        .bricks
        .iter()
        .find(|b| matches!(b.as_str(), "replica" | "stripe" | "disperse" | "transport"))
    {
        return Err(format!(
            "{b} must come before the bricks; {}",
            usage("volume create")
        ));
    }
    Ok(CliRequest::VolumeCreate(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Parsed, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    fn req(s: &str) -> CliRequest {
        match p(s).unwrap() {
            Parsed::Run(_, r) => r,
            Parsed::Help => panic!("help for {s}"),
        }
    }

    #[test]
    fn walkthrough_commands() {
        assert_eq!(
            req("peer probe node02"),
            CliRequest::PeerProbe {
                host: "node02".into()
            }
        );
        assert_eq!(
            req("peer detach node02"),
            CliRequest::PeerDetach {
                host: "node02".into(),
                force: false
            }
        );
        assert_eq!(req("peer status"), CliRequest::PeerStatus);
        assert_eq!(req("pool list"), CliRequest::PoolList);
        match req("volume create vol1 node01:/export/brick1 node02:/export/brick1") {
            CliRequest::VolumeCreate(a) => {
                assert_eq!(a.name, "vol1");
                assert_eq!(
                    a.bricks,
                    vec!["node01:/export/brick1", "node02:/export/brick1"]
                );
                assert!(!a.force && a.replica.is_none() && a.transport.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            req("volume start vol1"),
            CliRequest::VolumeStart {
                name: "vol1".into(),
                force: false
            }
        );
        assert_eq!(
            req("volume start vol1 force"),
            CliRequest::VolumeStart {
                name: "vol1".into(),
                force: true
            }
        );
        assert_eq!(
            req("volume stop vol1"),
            CliRequest::VolumeStop {
                name: "vol1".into(),
                force: false
            }
        );
        assert_eq!(
            req("volume delete vol1"),
            CliRequest::VolumeDelete {
                name: "vol1".into()
            }
        );
        assert_eq!(req("volume info"), CliRequest::VolumeInfo { name: None });
        assert_eq!(
            req("volume info all"),
            CliRequest::VolumeInfo { name: None }
        );
        assert_eq!(
            req("volume status vol4 detail"),
            CliRequest::VolumeStatus {
                name: Some("vol4".into()),
                detail: true
            }
        );
        assert_eq!(
            req("volume status all detail"),
            CliRequest::VolumeStatus {
                name: None,
                detail: true
            }
        );
        assert_eq!(
            req("volume set vol4 network.ping-timeout 22"),
            CliRequest::VolumeSet {
                name: "vol4".into(),
                key: "network.ping-timeout".into(),
                value: "22".into()
            }
        );
        assert_eq!(
            req("volume reset vol4"),
            CliRequest::VolumeReset {
                name: "vol4".into(),
                key: None,
                force: false
            }
        );
    }

    #[test]
    fn create_keywords() {
        match req("volume create vol4 replica 2 transport tcp,rdma n1:/b n2:/b force") {
            CliRequest::VolumeCreate(a) => {
                assert_eq!(a.replica, Some(2));
                assert_eq!(a.transport.as_deref(), Some("tcp,rdma"));
                assert_eq!(a.bricks.len(), 2);
                assert!(a.force);
            }
            other => panic!("{other:?}"),
        }
        match req("volume create vol3 stripe 3 disperse 3 n1:/b") {
            CliRequest::VolumeCreate(a) => assert_eq!((a.stripe, a.disperse), (Some(3), Some(3))),
            other => panic!("{other:?}"),
        }
        assert!(p("volume create vol1")
            .unwrap_err()
            .starts_with("Usage: volume create"));
        assert!(p("volume create vol1 replica x n:/b").is_err());
        assert!(p("volume create vol1 replica 2 replica 2 n:/b").is_err());
        assert!(p("volume create vol1 n:/b replica 2").is_err());
        assert!(p("volume create vol1 force").is_err());
    }

    #[test]
    fn global_flags_anywhere() {
        let args: Vec<String> = [
            "--remote-host",
            "node02",
            "volume",
            "info",
            "--json",
            "--mode=script",
            "--yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match parse(&args).unwrap() {
            Parsed::Run(o, r) => {
                assert_eq!(o.remote_host.as_deref(), Some("node02"));
                assert!(o.json && o.script && o.yes);
                assert_eq!(r, CliRequest::VolumeInfo { name: None });
            }
            Parsed::Help => panic!(),
        }
        match p("--remote-host=10.0.0.2:24100 peer status").unwrap() {
            Parsed::Run(o, _) => assert_eq!(o.remote_host.as_deref(), Some("10.0.0.2:24100")),
            Parsed::Help => panic!(),
        }
        assert!(p("--remote-host").is_err());
        assert!(p("--frobnicate volume info").is_err());
        assert!(p("--mode=interactive volume info").is_err());
    }

    #[test]
    fn errors_and_help() {
        assert_eq!(p("").unwrap(), Parsed::Help);
        assert_eq!(p("help").unwrap(), Parsed::Help);
        assert_eq!(p("volume help").unwrap(), Parsed::Help);
        assert_eq!(
            p("bogus").unwrap_err(),
            "unrecognized word: bogus (position 0)"
        );
        assert_eq!(
            p("volume frob").unwrap_err(),
            "unrecognized word: frob (position 1)"
        );
        assert_eq!(p("peer probe").unwrap_err(), "Usage: peer probe <HOSTNAME>");
        assert_eq!(
            p("volume start a b c").unwrap_err(),
            "Usage: volume start <VOLNAME> [force]"
        );
        assert!(p("volume set v k").is_err());
        assert!(p("pool frob").is_err());
        assert!(help_text().contains("volume status [all|<VOLNAME>] [detail]"));
    }

    #[test]
    fn heal_and_add_brick() {
        let heal = |s: &str| match req(s) {
            CliRequest::VolumeHeal { name, op } => {
                assert_eq!(name, "vol2");
                op
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(heal("volume heal vol2"), HealOp::Index);
        assert_eq!(heal("volume heal vol2 full"), HealOp::Full);
        assert_eq!(
            heal("volume heal vol2 info"),
            HealOp::Info { split_brain: false }
        );
        assert_eq!(
            heal("volume heal vol2 info split-brain"),
            HealOp::Info { split_brain: true }
        );
        assert_eq!(heal("volume heal vol2 statistics"), HealOp::Statistics);
        assert_eq!(heal("volume heal vol2 info healed"), HealOp::InfoHealed);
        assert_eq!(
            heal("volume heal vol2 statistics heal-count"),
            HealOp::HealCount
        );
        assert_eq!(
            heal("volume heal vol2 info heal-failed"),
            HealOp::InfoHealFailed
        );
        assert_eq!(
            heal("volume heal vol2 split-brain bigger-file /a/b"),
            HealOp::BiggerFile("/a/b".into())
        );
        assert_eq!(
            heal("volume heal vol2 split-brain latest-mtime f"),
            HealOp::LatestMtime("f".into())
        );
        assert_eq!(
            heal("volume heal vol2 split-brain source-brick n1:/b"),
            HealOp::SourceBrick {
                brick: "n1:/b".into(),
                file: None
            }
        );
        assert_eq!(
            heal("volume heal vol2 split-brain source-brick n1:/b /f"),
            HealOp::SourceBrick {
                brick: "n1:/b".into(),
                file: Some("/f".into())
            }
        );
        assert!(p("volume heal vol2 split-brain bigger-file")
            .unwrap_err()
            .starts_with("Usage: volume heal"));
        assert!(p("volume heal vol2 split-brain source-brick /f").is_err());
        assert!(p("volume heal vol2 frob").is_err());
        assert_eq!(
            req("volume add-brick vol2 replica 3 n3:/b force"),
            CliRequest::VolumeAddBrick {
                name: "vol2".into(),
                replica: Some(3),
                bricks: vec!["n3:/b".into()],
                force: true
            }
        );
        assert_eq!(
            req("volume add-brick vol2 n3:/b n4:/b"),
            CliRequest::VolumeAddBrick {
                name: "vol2".into(),
                replica: None,
                bricks: vec!["n3:/b".into(), "n4:/b".into()],
                force: false
            }
        );
        assert!(p("volume add-brick vol2 replica 3").is_err());
        assert!(p("volume add-brick vol2 replica x n:/b").is_err());
    }
}
