//! Host names and addresses: `HOST[:PORT]` parsing, resolution, whether an
//! address is this server's own, and the name this server goes by.

use std::net::{IpAddr, SocketAddr};

/// Splits `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
pub(crate) fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty host name".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad address {s}"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {s}"))?,
            None if tail.is_empty() => default_port,
            None => return Err(format!("bad address {s}")),
        };
        return Ok((host.to_string(), port));
    }
    if s.matches(':').count() > 1 {
        return Ok((s.to_string(), default_port));
    }
    match s.split_once(':') {
        Some((h, p)) => {
            let port = p.parse().map_err(|_| format!("bad port in {s}"))?;
            if h.is_empty() {
                return Err(format!("bad address {s}"));
            }
            Ok((h.to_string(), port))
        }
        None => Ok((s.to_string(), default_port)),
    }
}

/// `HOST:PORT` with brackets around IPv6 literals.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The addresses a host name resolves to (empty if it does not resolve).
pub(crate) async fn resolve(host: &str) -> Vec<IpAddr> {
    match tokio::net::lookup_host((host, 0)).await {
        Ok(it) => {
            let mut v: Vec<IpAddr> = it.map(|a| a.ip()).collect();
            v.dedup();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// True if `ip` is one of this server's addresses. With `--listen` only
/// that address counts (several servers may share a host).
pub(crate) fn is_local_ip(ip: IpAddr, listen: Option<IpAddr>) -> bool {
    match listen {
        Some(l) if !l.is_unspecified() => ip == l,
        _ => ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok(),
    }
}

/// The name this server registers itself under when it founds a pool: the
/// name its `--listen` address resolves back to, else that address, else the
/// system host name.
pub(crate) fn self_hostname(listen: Option<IpAddr>) -> String {
    match listen {
        Some(ip) if !ip.is_unspecified() => reverse_lookup(ip).unwrap_or_else(|| ip.to_string()),
        _ => system_hostname().unwrap_or_else(|| "localhost".to_string()),
    }
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it (or truncates, which the search below tolerates).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).to_string();
    (!s.is_empty()).then_some(s)
}

/// The host name an address resolves back to (hosts file or DNS).
fn reverse_lookup(ip: IpAddr) -> Option<String> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough for any sockaddr.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: pointers and lengths describe valid buffers owned by this frame.
    let rc = unsafe {
        libc::getnameinfo(
            &storage as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo NUL-terminated the buffer on success.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) }
        .to_string_lossy()
        .to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("node02", 24007).unwrap(),
            ("node02".into(), 24007)
        );
        assert_eq!(
            split_host_port("node02:24100", 1).unwrap(),
            ("node02".into(), 24100)
        );
        assert_eq!(split_host_port("[::1]:5", 1).unwrap(), ("::1".into(), 5));
        assert_eq!(split_host_port("::1", 7).unwrap(), ("::1".into(), 7));
        assert!(split_host_port("node02:x", 1).is_err());
        assert!(split_host_port(":5", 1).is_err());
        assert!(split_host_port("", 1).is_err());
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("n", 5), "n:5");
    }

    #[test]
    fn local_addresses() {
        assert!(is_local_ip("127.0.0.1".parse().unwrap(), None));
        let l: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(is_local_ip(l, Some(l)));
        assert!(!is_local_ip("127.0.0.3".parse().unwrap(), Some(l)));
        assert!(!is_local_ip("192.0.2.1".parse().unwrap(), None));
        assert_eq!(
            reverse_lookup("127.0.0.1".parse().unwrap()).as_deref(),
            Some("localhost")
        );
    }
}
