//! How the CLI prints a daemon's answer: GlusterFS's layouts (`peer status`,
//! `pool list`, `volume info`, `volume status [detail]`) or, with `--json`,
//! one JSON document. Returns what goes to stdout and stderr and the exit code.

use serde_json::{json, Value};
use std::fmt::Write;

use crate::proto::{
    BrickHeal, BrickState, CliReply, CrawlRecord, HealOp, HealView, NfsServerState, PeerRow,
    VolumeStatusView, VolumeView,
};

/// Text to print and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// For stdout.
    pub(crate) stdout: String,
    /// For stderr.
    pub(crate) stderr: String,
    /// Process exit code.
    pub(crate) code: i32,
}

fn ok(stdout: String) -> Rendered {
    Rendered {
        stdout,
        stderr: String::new(),
        code: 0,
    }
}

/// A failure message, printed to stderr with exit code 1.
pub(crate) fn failed(msg: &str) -> Rendered {
    Rendered {
        stdout: String::new(),
        stderr: format!("{msg}\n"),
        code: 1,
    }
}

/// Renders an answer as GlusterFS prints it.
pub(crate) fn text(reply: &CliReply) -> Rendered {
    match reply {
        CliReply::Done(m) => ok(format!("{m}\n")),
        CliReply::Failed(m) => failed(m),
        CliReply::Peers(rows) => ok(peer_status(rows)),
        CliReply::Pool(rows) => ok(pool_list(rows)),
        CliReply::Volumes(vols) if vols.is_empty() => ok("No volumes present\n".into()),
        CliReply::Volumes(vols) => ok(vols.iter().map(volume_info).collect()),
        CliReply::Status(vols) => ok(vols
            .iter()
            .map(volume_status)
            .collect::<Vec<_>>()
            .join("\n")),
        CliReply::Heal(h) => ok(heal_text(h)),
    }
}

/// `volume heal` as GlusterFS prints it.
fn heal_text(h: &HealView) -> String {
    let mut s = format!("{}\n", h.message);
    match h.op {
        HealOp::Info { .. } => {
            for b in &h.bricks {
                let _ = write!(s, "\nBrick {}\n", b.brick);
                if !b.connected {
                    s.push_str("Status: Brick is Not connected\nNumber of entries: -\n");
                    continue;
                }
                let _ = writeln!(s, "Number of entries: {}", b.entries.len());
                for e in &b.entries {
                    let _ = writeln!(s, "{e}");
                }
            }
        }
        HealOp::HealCount => {
            for b in &h.bricks {
                let _ = write!(s, "\nBrick {}\n", b.brick);
                if b.connected {
                    let _ = writeln!(s, "Number of entries: {}", b.count);
                } else {
                    s.push_str("Status: Brick is Not connected\nNumber of entries: -\n");
                }
            }
        }
        HealOp::InfoHealed | HealOp::InfoHealFailed => {
            for b in &h.bricks {
                let _ = write!(s, "\nBrick {}\n", b.brick);
                if !b.connected {
                    s.push_str("Status: Brick is Not connected\nNumber of entries: -\n");
                    continue;
                }
                let _ = writeln!(s, "Number of entries: {}", b.entries.len());
                if b.entries.is_empty() {
                    continue;
                }
                s.push_str(
                    "at                    path on brick\n-----------------------------------\n",
                );
                for (e, t) in b.entries.iter().zip(&b.times) {
                    let _ = writeln!(s, "{} {e}", iso(*t));
                }
            }
        }
        HealOp::Statistics => {
            for b in &h.bricks {
                s.push_str("------------------------------------------------\n");
                let host = b.brick.split(':').next().unwrap_or_default();
                let _ = write!(
                    s,
                    "\nCrawl statistics for brick no {}\nHostname of brick {host}\n",
                    b.index
                );
                if !b.connected {
                    s.push_str("Status: Brick is Not connected\n");
                }
                for c in &b.crawls {
                    let end = c.end.map_or("Could not determine the end time".into(), utc);
                    let _ = write!(
                        s,
                        "\nStarting time of crawl: {}\n\nEnding time of crawl: {end}\n\nType of crawl: {}\nNo. of entries healed: {}\nNo. of entries in split-brain: {}\nNo. of heal failed entries: {}\n",
                        utc(c.start),
                        c.kind,
                        c.healed,
                        c.split_brain,
                        c.failed
                    );
                }
            }
        }
        _ => {}
    }
    s
}

/// Seconds since the epoch as `2026-11-25 13:07:30` (UTC).
fn iso(secs: u64) -> String {
    let (year, month, day, _) = civil(secs);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day and days since the epoch of `secs` (UTC), by Howard
/// Hinnant's civil-from-days algorithm.
fn civil(secs: u64) -> (i64, i64, i64, i64) {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day, days)
}

/// Seconds since the epoch as `Wed Nov 25 13:07:30 2026` (UTC).
fn utc(secs: u64) -> String {
    let (year, month, day, days) = civil(secs);
    let rem = secs % 86_400;
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {year}",
        WD[(days.rem_euclid(7)) as usize],
        MON[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn crawl_json(c: &CrawlRecord) -> Value {
    json!({
        "type": c.kind, "start": c.start, "end": c.end, "scanned": c.scanned,
        "healed": c.healed, "failed": c.failed, "split_brain": c.split_brain,
    })
}

fn heal_brick_json(b: &BrickHeal) -> Value {
    json!({
        "index": b.index, "brick": b.brick, "connected": b.connected,
        "number_of_entries": if b.connected { Some(b.entries.len()) } else { None },
        "entries": b.entries,
        "times": b.times,
        "count": b.count,
        "crawls": b.crawls.iter().map(crawl_json).collect::<Vec<_>>(),
    })
}

fn peer_status(rows: &[PeerRow]) -> String {
    let mut s = format!("Number of Peers: {}\n", rows.len());
    for r in rows {
        let state = if r.connected {
            "Connected"
        } else {
            "Disconnected"
        };
        let _ = write!(
            s,
            "\nHostname: {}\nUuid: {}\nState: Peer in Cluster ({state})\n",
            r.hostname, r.uuid
        );
    }
    s
}

fn pool_list(rows: &[PeerRow]) -> String {
    let mut s = String::from("UUID\t\t\t\t\tHostname \tState\n");
    for r in rows {
        let state = if r.connected {
            "Connected"
        } else {
            "Disconnected"
        };
        let _ = writeln!(s, "{}\t{:<9}\t{state}", r.uuid, r.hostname);
    }
    s
}

/// `Number of Bricks:` as GlusterFS prints it: `4`, or `2 x 2 = 4` for
/// replicated volumes.
fn brick_count(v: &VolumeView) -> String {
    let n = v.bricks.len();
    if v.replica_count > 1 {
        format!("{} x {} = {n}", n / v.replica_count, v.replica_count)
    } else {
        n.to_string()
    }
}

fn volume_info(v: &VolumeView) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "\nVolume Name: {}\nType: {}\nVolume ID: {}\nStatus: {}\nNumber of Bricks: {}\nTransport-type: {}\nBricks:\n",
        v.name,
        v.kind,
        v.id,
        v.status,
        brick_count(v),
        v.transport
    );
    for (i, b) in v.bricks.iter().enumerate() {
        let _ = writeln!(s, "Brick{}: {b}", i + 1);
    }
    if !v.options.is_empty() {
        s.push_str("Options Reconfigured:\n");
        for (k, val) in &v.options {
            let _ = writeln!(s, "{k}: {val}");
        }
    }
    s
}

const LINE: &str = "------------------------------------------------------------------------------";

fn or_na<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "N/A".into())
}

fn port_of(b: &BrickState) -> String {
    if b.online && b.port != 0 {
        b.port.to_string()
    } else {
        "N/A".into()
    }
}

fn yn(b: &BrickState) -> &'static str {
    if b.online {
        "Y"
    } else {
        "N"
    }
}

fn volume_status(v: &VolumeStatusView) -> String {
    let detail = v.bricks.iter().any(|b| b.detail.is_some());
    let mut s = format!("Status of volume: {}\n", v.name);
    if detail {
        for b in &v.bricks {
            let d = b.detail.as_ref();
            let row = |s: &mut String, k: &str, val: String| {
                let _ = writeln!(s, "{k:<20} : {val}");
            };
            s.push_str(LINE);
            s.push('\n');
            row(&mut s, "Brick", format!("Brick {}", b.brick));
            row(&mut s, "Port", port_of(b));
            row(&mut s, "Online", yn(b).into());
            row(&mut s, "Pid", or_na(b.pid));
            row(&mut s, "File System", or_na(d.map(|d| d.fs_type.clone())));
            row(&mut s, "Device", or_na(d.map(|d| d.device.clone())));
            row(
                &mut s,
                "Mount Options",
                or_na(d.map(|d| d.mount_options.clone())),
            );
            row(&mut s, "Inode Size", or_na(d.and_then(|d| d.inode_size)));
            row(
                &mut s,
                "Disk Space Free",
                or_na(d.map(|d| human_size(d.free_bytes))),
            );
            row(
                &mut s,
                "Total Disk Space",
                or_na(d.map(|d| human_size(d.total_bytes))),
            );
            row(&mut s, "Inode Count", or_na(d.map(|d| d.inode_count)));
            row(&mut s, "Free Inodes", or_na(d.map(|d| d.free_inodes)));
        }
        return s;
    }
    let _ = writeln!(
        s,
        "{:<50} {:<8} {:<8} Pid",
        "Gluster process", "Port", "Online"
    );
    s.push_str(LINE);
    s.push('\n');
    for b in &v.bricks {
        let name = format!("Brick {}", b.brick);
        let _ = writeln!(
            s,
            "{name:<50} {:<8} {:<8} {}",
            port_of(b),
            yn(b),
            or_na(b.pid)
        );
    }
    for n in &v.nfs {
        let name = format!("NFS Server on {}", n.host);
        let port = if n.online {
            n.port.to_string()
        } else {
            "N/A".into()
        };
        let online = if n.online { "Y" } else { "N" };
        let _ = writeln!(s, "{name:<50} {port:<8} {online:<8} {}", or_na(n.pid));
    }
    for n in &v.shd {
        let name = format!("Self-heal Daemon on {}", n.host);
        let online = if n.online { "Y" } else { "N" };
        let _ = writeln!(s, "{name:<50} {:<8} {online:<8} {}", "N/A", or_na(n.pid));
    }
    s
}

/// Sizes as GlusterFS prints them: `92.4GB`, `512.0MB`, `100Bytes`.
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PB", 1 << 50),
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ];
    for (u, size) in UNITS {
        if n >= size {
            return format!("{:.1}{u}", n as f64 / size as f64);
        }
    }
    format!("{n}Bytes")
}

/// Renders an answer as JSON (`--json`).
pub(crate) fn json(reply: &CliReply) -> Rendered {
    let (v, code) = match reply {
        CliReply::Done(m) => (json!({ "ok": true, "message": m }), 0),
        CliReply::Failed(m) => (json!({ "ok": false, "error": m }), 1),
        CliReply::Peers(rows) => (
            json!({ "peers": rows.iter().map(|r| json!({
                "hostname": r.hostname, "uuid": r.uuid, "state": "Peer in Cluster", "connected": r.connected,
            })).collect::<Vec<_>>() }),
            0,
        ),
        CliReply::Pool(rows) => (
            json!({ "pool": rows.iter().map(|r| json!({
                "uuid": r.uuid, "hostname": r.hostname,
                "state": if r.connected { "Connected" } else { "Disconnected" }, "connected": r.connected,
            })).collect::<Vec<_>>() }),
            0,
        ),
        CliReply::Volumes(vols) => (
            json!({ "volumes": vols.iter().map(|v| json!({
                "name": v.name, "type": v.kind, "id": v.id, "status": v.status, "transport": v.transport,
                "brick_count": v.bricks.len(), "replica_count": v.replica_count,
                "bricks": v.bricks, "options": v.options,
            })).collect::<Vec<_>>() }),
            0,
        ),
        CliReply::Heal(h) => (
            json!({
                "volume": h.volume, "message": h.message,
                "bricks": h.bricks.iter().map(heal_brick_json).collect::<Vec<_>>(),
            }),
            0,
        ),
        CliReply::Status(vols) => (
            json!({ "volumes": vols.iter().map(|v| json!({
                "name": v.name,
                "bricks": v.bricks.iter().map(brick_json).collect::<Vec<_>>(),
                "nfs": v.nfs.iter().map(nfs_json).collect::<Vec<_>>(),
                "shd": v.shd.iter().map(|n| json!({
                    "host": n.host, "online": n.online, "pid": n.pid,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>() }),
            0,
        ),
    };
    let body = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    Rendered {
        stdout: format!("{body}\n"),
        stderr: String::new(),
        code,
    }
}

fn nfs_json(n: &NfsServerState) -> Value {
    json!({
        "host": n.host,
        "port": if n.online { json!(n.port) } else { Value::Null },
        "online": n.online, "pid": n.pid,
    })
}

fn brick_json(b: &BrickState) -> Value {
    let (host, path) = b
        .brick
        .rsplit_once(":/")
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .unwrap_or_default();
    let mut v = json!({
        "brick": b.brick, "host": host, "path": path,
        "port": if b.port == 0 { Value::Null } else { json!(b.port) },
        "online": b.online, "pid": b.pid,
    });
    if let Some(d) = &b.detail {
        v["detail"] = json!({
            "fs_type": d.fs_type, "device": d.device, "mount_options": d.mount_options,
            "inode_size": d.inode_size, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes,
            "inode_count": d.inode_count, "free_inodes": d.free_inodes,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::BrickDetail;
    use std::collections::BTreeMap;

    fn brick(i: usize, label: &str, online: bool) -> BrickState {
        BrickState {
            index: i,
            brick: label.into(),
            port: 24011,
            online,
            pid: online.then_some(1254),
            detail: None,
        }
    }

    #[test]
    fn peer_status_layout() {
        let rows = vec![
            PeerRow {
                uuid: "u2".into(),
                hostname: "node02".into(),
                connected: true,
            },
            PeerRow {
                uuid: "u3".into(),
                hostname: "node03".into(),
                connected: false,
            },
        ];
        assert_eq!(
            text(&CliReply::Peers(rows.clone())).stdout,
            "Number of Peers: 2\n\nHostname: node02\nUuid: u2\nState: Peer in Cluster (Connected)\n\nHostname: node03\nUuid: u3\nState: Peer in Cluster (Disconnected)\n"
        );
        let pool = text(&CliReply::Pool(rows)).stdout;
        assert!(pool.starts_with("UUID\t\t\t\t\tHostname \tState\n"));
        assert!(pool.contains("u3\tnode03   \tDisconnected\n"));
        assert_eq!(
            text(&CliReply::Peers(vec![])).stdout,
            "Number of Peers: 0\n"
        );
    }

    #[test]
    fn volume_info_layout() {
        let v = VolumeView {
            name: "vol1".into(),
            kind: "Distribute".into(),
            id: "7a6d".into(),
            status: "Started".into(),
            transport: "tcp".into(),
            bricks: vec![
                "node01:/export/brick1".into(),
                "node02:/export/brick1".into(),
            ],
            options: BTreeMap::from([("network.ping-timeout".to_string(), "22".to_string())]),
            replica_count: 1,
        };
        let mut r = v.clone();
        r.kind = "Distributed-Replicate".into();
        r.replica_count = 2;
        r.bricks.extend([
            "node03:/export/brick1".into(),
            "node04:/export/brick1".into(),
        ]);
        let out = text(&CliReply::Volumes(vec![r.clone()])).stdout;
        assert!(out.contains("\nType: Distributed-Replicate\n"), "{out}");
        assert!(out.contains("\nNumber of Bricks: 2 x 2 = 4\n"), "{out}");
        let j: Value = serde_json::from_str(&json(&CliReply::Volumes(vec![r])).stdout).unwrap();
        assert_eq!(j["volumes"][0]["replica_count"], 2);
        assert_eq!(
            text(&CliReply::Volumes(vec![v.clone()])).stdout,
            "\nVolume Name: vol1\nType: Distribute\nVolume ID: 7a6d\nStatus: Started\nNumber of Bricks: 2\nTransport-type: tcp\nBricks:\nBrick1: node01:/export/brick1\nBrick2: node02:/export/brick1\nOptions Reconfigured:\nnetwork.ping-timeout: 22\n"
        );
        assert_eq!(
            text(&CliReply::Volumes(vec![])).stdout,
            "No volumes present\n"
        );
        let j: Value = serde_json::from_str(&json(&CliReply::Volumes(vec![v])).stdout).unwrap();
        assert_eq!(j["volumes"][0]["bricks"][1], "node02:/export/brick1");
        assert_eq!(j["volumes"][0]["options"]["network.ping-timeout"], "22");
    }

    #[test]
    fn status_layouts() {
        let view = VolumeStatusView {
            name: "vol4".into(),
            bricks: vec![
                brick(0, "node01:/export/brick5", true),
                brick(1, "node02:/export/brick5", false),
            ],
            nfs: vec![
                NfsServerState {
                    host: "localhost".into(),
                    port: 2049,
                    online: true,
                    pid: Some(2301),
                    volumes: vec!["vol4".into()],
                },
                NfsServerState {
                    host: "node02".into(),
                    port: 2049,
                    online: false,
                    pid: None,
                    volumes: vec![],
                },
            ],
            shd: vec![NfsServerState {
                host: "localhost".into(),
                port: 0,
                online: true,
                pid: Some(2302),
                volumes: vec!["vol4".into()],
            }],
        };
        let out = text(&CliReply::Status(vec![view.clone()])).stdout;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Status of volume: vol4");
        assert!(
            lines[1].starts_with("Gluster process") && lines[1].ends_with("Port     Online   Pid")
        );
        assert_eq!(lines[2], LINE);
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["Brick", "node01:/export/brick5", "24011", "Y", "1254"]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["Brick", "node02:/export/brick5", "N/A", "N", "N/A"]
        );
        assert_eq!(
            lines[5].split_whitespace().collect::<Vec<_>>(),
            ["NFS", "Server", "on", "localhost", "2049", "Y", "2301"]
        );
        assert_eq!(
            lines[6].split_whitespace().collect::<Vec<_>>(),
            ["NFS", "Server", "on", "node02", "N/A", "N", "N/A"]
        );
        assert_eq!(
            lines[7].split_whitespace().collect::<Vec<_>>(),
            ["Self-heal", "Daemon", "on", "localhost", "N/A", "Y", "2302"]
        );
        let j: Value =
            serde_json::from_str(&json(&CliReply::Status(vec![view.clone()])).stdout).unwrap();
        assert_eq!(j["volumes"][0]["nfs"][0]["port"], 2049);
        assert_eq!(j["volumes"][0]["nfs"][1]["online"], false);
        assert_eq!(j["volumes"][0]["shd"][0]["pid"], 2302);

        let mut detailed = view;
        detailed.bricks[0].detail = Some(BrickDetail {
            fs_type: "ext4".into(),
            device: "/dev/vdb".into(),
            mount_options: "rw,user_xattr".into(),
            inode_size: Some(256),
            free_bytes: 99_214_016_102,
            total_bytes: 99_750_886_604,
            inode_count: 6193152,
            free_inodes: 6130970,
        });
        let out = text(&CliReply::Status(vec![detailed.clone()])).stdout;
        for want in [
            "Brick                : Brick node01:/export/brick5",
            "Port                 : 24011",
            "Online               : Y",
            "Pid                  : 1254",
            "File System          : ext4",
            "Device               : /dev/vdb",
            "Mount Options        : rw,user_xattr",
            "Inode Size           : 256",
            "Disk Space Free      : 92.4GB",
            "Total Disk Space     : 92.9GB",
            "Inode Count          : 6193152",
            "Free Inodes          : 6130970",
            "Online               : N",
            "File System          : N/A",
        ] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
        let j: Value =
            serde_json::from_str(&json(&CliReply::Status(vec![detailed])).stdout).unwrap();
        assert_eq!(j["volumes"][0]["bricks"][0]["detail"]["inode_size"], 256);
        assert_eq!(j["volumes"][0]["bricks"][1]["online"], false);
        assert_eq!(j["volumes"][0]["bricks"][0]["path"], "/export/brick5");
    }

    #[test]
    fn messages_and_sizes() {
        let r = text(&CliReply::Failed("Volume vol9 does not exist".into()));
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (1, "Volume vol9 does not exist\n")
        );
        assert_eq!(json(&CliReply::Failed("x".into())).code, 1);
        assert_eq!(
            text(&CliReply::Done("Detach successful".into())).stdout,
            "Detach successful\n"
        );
        assert_eq!(human_size(100), "100Bytes");
        assert_eq!(human_size(1536), "1.5KB");
        assert_eq!(human_size(128 << 20), "128.0MB");
    }

    #[test]
    fn heal_layouts() {
        assert_eq!(utc(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(utc(1_795_612_050), "Wed Nov 25 13:07:30 2026");
        assert_eq!(iso(1_795_612_050), "2026-11-25 13:07:30");
        let b = |i: usize, up: bool, entries: &[&str]| BrickHeal {
            index: i,
            brick: format!("node0{}:/export/b", i + 1),
            connected: up,
            entries: entries.iter().map(|e| e.to_string()).collect(),
            crawls: vec![CrawlRecord {
                kind: "INDEX".into(),
                start: 0,
                end: Some(1),
                scanned: 3,
                healed: 2,
                failed: 1,
                split_brain: 0,
            }],
            times: vec![1_795_612_050, 1_795_612_051],
            count: 7,
        };
        let view = |op: HealOp| {
            CliReply::Heal(HealView {
                volume: "v".into(),
                op,
                bricks: vec![b(0, true, &["/", "<gfid:x>"]), b(1, false, &[])],
                message: "Heal operation on volume v has been successful".into(),
            })
        };
        let out = text(&view(HealOp::Info { split_brain: false })).stdout;
        assert_eq!(
            out,
            "Heal operation on volume v has been successful\n\nBrick node01:/export/b\nNumber of entries: 2\n/\n<gfid:x>\n\nBrick node02:/export/b\nStatus: Brick is Not connected\nNumber of entries: -\n"
        );
        let out = text(&view(HealOp::InfoHealed)).stdout;
        assert!(
            out.contains("Brick node01:/export/b\nNumber of entries: 2\nat                    path on brick\n-----------------------------------\n2026-11-25 13:07:30 /\n2026-11-25 13:07:31 <gfid:x>\n"),
            "{out}"
        );
        let out = text(&view(HealOp::HealCount)).stdout;
        assert!(
            out.ends_with("\nBrick node01:/export/b\nNumber of entries: 7\n\nBrick node02:/export/b\nStatus: Brick is Not connected\nNumber of entries: -\n"),
            "{out}"
        );
        let out = text(&view(HealOp::Statistics)).stdout;
        assert!(out.contains("Crawl statistics for brick no 1\nHostname of brick node02\n"));
        assert!(out.contains("Type of crawl: INDEX\nNo. of entries healed: 2\nNo. of entries in split-brain: 0\nNo. of heal failed entries: 1\n"));
        let j: Value = serde_json::from_str(&json(&view(HealOp::Statistics)).stdout).unwrap();
        assert_eq!(j["bricks"][0]["number_of_entries"], 2);
        assert_eq!(j["bricks"][1]["number_of_entries"], Value::Null);
        assert_eq!(j["bricks"][0]["crawls"][0]["healed"], 2);
    }
}
