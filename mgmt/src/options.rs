//! Volume options accepted by `volume set`: the known option groups and the
//! values a few options must have. Unknown keys are refused, as GlusterFS
//! does, so a typo does not silently do nothing.

/// Option groups (the part before the first dot) `volume set` accepts.
const GROUPS: &[&str] = &[
    "auth",
    "client",
    "cluster",
    "diagnostics",
    "features",
    "geo-replication",
    "hdfs",
    "network",
    "nfs",
    "performance",
    "server",
    "storage",
    "swift",
    "transport",
];

enum Kind {
    Bool,
    Int(i64, i64),
    Size,
    OneOf(&'static [&'static str]),
}

/// Options whose values are checked.
const TYPED: &[(&str, Kind)] = &[
    ("network.ping-timeout", Kind::Int(0, 1013)),
    ("network.frame-timeout", Kind::Int(5, 1800)),
    (
        "cluster.quorum-type",
        Kind::OneOf(&["none", "auto", "fixed"]),
    ),
    ("cluster.quorum-count", Kind::Int(1, 64)),
    ("cluster.min-free-disk", Kind::Size),
    ("performance.cache-size", Kind::Size),
    ("performance.cache-max-file-size", Kind::Size),
    ("performance.cache-min-file-size", Kind::Size),
    ("performance.write-behind-window-size", Kind::Size),
    ("performance.io-thread-count", Kind::Int(1, 64)),
    ("performance.flush-behind", Kind::Bool),
    ("performance.write-behind", Kind::Bool),
    ("performance.read-ahead", Kind::Bool),
    ("performance.io-cache", Kind::Bool),
    ("performance.quick-read", Kind::Bool),
    ("performance.stat-prefetch", Kind::Bool),
    ("nfs.disable", Kind::Bool),
    ("nfs.bind-all", Kind::Bool),
    ("swift.enable", Kind::Bool),
    ("hdfs.enable", Kind::Bool),
    ("features.quota", Kind::Bool),
    ("features.read-only", Kind::Bool),
    ("diagnostics.latency-measurement", Kind::Bool),
    ("diagnostics.count-fop-hits", Kind::Bool),
];

/// True if `nfs.disable` is set to a true spelling (`on`, `yes`, `true`,
/// `enable`, `1`): the volume is not served by the servers' NFS gateways.
pub fn nfs_disabled(options: &std::collections::BTreeMap<String, String>) -> bool {
    is_on(options, "nfs.disable")
}

/// True if `nfs.bind-all` is on: the server's NFS gateway (which serves
/// every exported volume, so one volume asking is enough, as GlusterFS's
/// gluster/nfs options are) listens on all addresses of its host rather
/// than the server's `--listen` one, so a floating service address (a VIP
/// that keepalived or CTDB moves between servers) reaches it.
pub fn nfs_bind_all(options: &std::collections::BTreeMap<String, String>) -> bool {
    is_on(options, "nfs.bind-all")
}

/// True if option `key` is set to a true spelling.
fn is_on(options: &std::collections::BTreeMap<String, String>, key: &str) -> bool {
    options
        .get(key)
        .map(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "on" | "yes" | "true" | "enable" | "1"
            )
        })
        .unwrap_or(false)
}

/// True for the spellings GlusterFS accepts as a boolean.
pub(crate) fn is_bool(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "on" | "off" | "yes" | "no" | "true" | "false" | "enable" | "disable" | "1" | "0"
    )
}

fn is_size(v: &str) -> bool {
    let v = v.trim();
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
    let unit = &v[digits.len()..].to_ascii_uppercase();
    !digits.is_empty()
        && digits.parse::<f64>().map(|n| n >= 0.0).unwrap_or(false)
        && matches!(
            unit.as_str(),
            "" | "B" | "KB" | "MB" | "GB" | "TB" | "PB" | "K" | "M" | "G" | "T" | "P" | "%"
        )
}

/// Checks `volume set KEY VALUE`; the error is what the CLI prints.
pub(crate) fn validate(key: &str, value: &str) -> Result<(), String> {
    let group = key.split_once('.');
    match group {
        Some((g, rest))
            if GROUPS.contains(&g) && !rest.is_empty() && !key.contains(char::is_whitespace) => {}
        _ => return Err(format!("option : {key} does not exist")),
    }
    if value.is_empty() || value.contains('\n') {
        return Err(format!("invalid value for {key}"));
    }
    let Some((_, kind)) = TYPED.iter().find(|(k, _)| *k == key) else {
        return Ok(());
    };
    let ok = match kind {
        Kind::Bool => is_bool(value),
        Kind::Int(lo, hi) => value
            .parse::<i64>()
            .map(|n| (*lo..=*hi).contains(&n))
            .unwrap_or(false),
        Kind::Size => is_size(value),
        Kind::OneOf(allowed) => allowed.contains(&value),
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Kind::Bool => format!("option {key} {value}: not a valid boolean value"),
        Kind::Int(lo, hi) => format!("option {key} {value}: must be an integer in {lo}..{hi}"),
        Kind::Size => format!("option {key} {value}: not a valid size"),
        Kind::OneOf(allowed) => format!(
            "option {key} {value}: must be one of {}",
            allowed.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walkthrough_options_pass() {
        for (k, v) in [
            ("performance.flush-behind", "off"),
            ("cluster.quorum-type", "auto"),
            ("cluster.quorum-type", "fixed"),
            ("cluster.quorum-count", "2"),
            ("network.ping-timeout", "22"),
            ("performance.cache-size", "128MB"),
            ("performance.cache-max-file-size", "100MB"),
            ("auth.allow", "10.0.0.*"),
        ] {
            validate(k, v).unwrap_or_else(|e| panic!("{k} {v}: {e}"));
        }
    }

    #[test]
    fn nfs_disable_spellings() {
        let opts = |v: &str| {
            std::collections::BTreeMap::from([("nfs.disable".to_string(), v.to_string())])
        };
        assert!(!nfs_disabled(&Default::default()));
        for on in ["on", "ON", "yes", "true", "enable", "1"] {
            assert!(nfs_disabled(&opts(on)), "{on}");
        }
        for off in ["off", "no", "false", "disable", "0"] {
            assert!(!nfs_disabled(&opts(off)), "{off}");
        }
    }

    #[test]
    fn bad_options_fail() {
        assert_eq!(
            validate("foo", "1").unwrap_err(),
            "option : foo does not exist"
        );
        assert!(validate("bogus.key", "1").is_err());
        assert!(validate("network.ping-timeout", "soon").is_err());
        assert!(validate("cluster.quorum-type", "most").is_err());
        assert!(validate("performance.cache-size", "lots").is_err());
        assert!(validate("nfs.disable", "maybe").is_err());
        assert!(validate("nfs.bind-all", "everywhere").is_err());
        assert!(validate("nfs.bind-all", "on").is_ok());
        assert!(validate("performance.", "1").is_err());
    }
}
