//! Virtual and backend addresses: unicast, with a port, one family per service.

use std::net::{IpAddr, SocketAddr};

use super::{
    super::{Family, NamedTarget, Target, raw::RawVirtualAddress},
    ConfigError,
};

/// Most virtual addresses one service may have.
const MAX_VIPS_PER_SERVICE: usize = 4;

pub(super) fn virtual_addresses(
    key: &str,
    raw: &[RawVirtualAddress],
) -> Result<Vec<Target>, ConfigError> {
    let key = format!("{key}.virtual_addresses");
    if raw.is_empty() || raw.len() > MAX_VIPS_PER_SERVICE {
        return Err(ConfigError::invalid(
            key,
            format!(
                "needs 1 to {MAX_VIPS_PER_SERVICE} addresses, found {}",
                raw.len()
            ),
        ));
    }
    let vips = raw
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let k = format!("{key}[{i}]");
            match a {
                RawVirtualAddress::Literal(text) => socket_addr(&k, text).map(Target::Address),
                RawVirtualAddress::Name(n) => named(&k, &n.dns, Some(n.port)).map(Target::Name),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for (i, v) in vips.iter().enumerate() {
        if !seen.insert(v) {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("{v} is listed twice"),
            ));
        }
    }
    Ok(vips)
}

/// The service's family: what its literal addresses are (all the same), or `family:` when
/// every address is a name.
pub(super) fn service_family(
    key: &str,
    raw: Option<&str>,
    vips: &[Target],
) -> Result<Family, ConfigError> {
    let literal = vips.iter().enumerate().find_map(|(i, v)| match v {
        Target::Address(a) => Some((i, Family::of(a.ip()))),
        Target::Name(_) => None,
    });
    let named = match raw {
        None => None,
        Some("ipv4") => Some(Family::V4),
        Some("ipv6") => Some(Family::V6),
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.family"),
                format!("{other:?}: expected \"ipv4\" or \"ipv6\""),
            ));
        }
    };
    let family = match (literal, named) {
        (Some((_, l)), Some(n)) if l != n => {
            return Err(ConfigError::invalid(
                format!("{key}.family"),
                format!(
                    "says {} but the virtual addresses are {}",
                    n.label(),
                    l.label()
                ),
            ));
        }
        (Some((_, l)), _) => l,
        (None, Some(n)) => n,
        (None, None) => Family::V4,
    };
    if let Some(i) = vips
        .iter()
        .position(|v| matches!(v, Target::Address(a) if Family::of(a.ip()) != family))
    {
        return Err(ConfigError::invalid(
            format!("{key}.virtual_addresses[{i}]"),
            "mixes IPv4 and IPv6 in one service: define one service per family \
             (IPv6 callers already reach IPv4 addresses through their v4-mapped form)",
        ));
    }
    Ok(family)
}

/// Longest name DNS carries (RFC 1035: 255 octets on the wire, 253 written).
const MAX_NAME: usize = 253;

/// `{dns: name, port: N}`: a hostname (letters, digits, `-`, `_` in labels of 1 to 63
/// characters) and a port.
pub(super) fn named(key: &str, name: &str, port: Option<i64>) -> Result<NamedTarget, ConfigError> {
    let bad = |why: String| ConfigError::invalid(format!("{key}.dns"), format!("{name:?} {why}"));
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() || name.len() > MAX_NAME {
        return Err(bad(format!("must be a name of 1 to {MAX_NAME} characters")));
    }
    for label in body.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !ok_chars {
            return Err(bad(format!(
                "has a label {label:?}: labels are 1 to 63 letters, digits, '-' or '_'"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad(format!(
                "has a label {label:?} that begins or ends with '-'"
            )));
        }
    }
    if body.parse::<IpAddr>().is_ok() || body.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("is an address: write it as `address: ip:port`".into()));
    }
    let Some(port) = port else {
        return Err(ConfigError::invalid(
            format!("{key}.port"),
            "missing: a name needs the port its addresses are reached on",
        ));
    };
    if !(1..=i64::from(u16::MAX)).contains(&port) {
        return Err(ConfigError::invalid(
            format!("{key}.port"),
            format!("{port} is not a port (1 to 65535)"),
        ));
    }
    Ok(NamedTarget {
        name: name.to_ascii_lowercase(),
        port: port as u16,
    })
}

pub(super) fn socket_addr(key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = raw.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{raw:?} is not an address and port (\"10.0.0.1:80\" or \"[fd00::1]:80\")"),
        )
    })?;
    if addr.port() == 0 {
        return Err(ConfigError::invalid(
            key,
            format!("{raw:?}: port 0 is not a port"),
        ));
    }
    let broadcast = matches!(addr.ip(), IpAddr::V4(v4) if v4.is_broadcast());
    if addr.ip().is_unspecified() || addr.ip().is_multicast() || broadcast {
        return Err(ConfigError::invalid(
            key,
            format!("{raw:?}: not a unicast address"),
        ));
    }
    if let IpAddr::V6(v6) = addr.ip()
        && v6.is_unicast_link_local()
    {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{raw:?}: an IPv6 link-local address means something only with a scope (an \
                 interface), and scoped addresses are not supported"
            ),
        ));
    }
    if let SocketAddr::V6(v6) = addr
        && (v6.ip().to_ipv4_mapped().is_some() || v6.scope_id() != 0)
    {
        return Err(ConfigError::invalid(
            key,
            format!("{raw:?}: write IPv4 addresses as IPv4; scoped IPv6 is not supported"),
        ));
    }
    Ok(addr)
}
