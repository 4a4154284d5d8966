//! Virtual and backend addresses: unicast, with a port, one family per service.

use std::net::{IpAddr, SocketAddr};

use super::ConfigError;

/// Most virtual addresses one service may have.
const MAX_VIPS_PER_SERVICE: usize = 4;

pub(super) fn virtual_addresses(key: &str, raw: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
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
        .map(|(i, a)| socket_addr(&format!("{key}[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = vips.iter().position(|v| v.is_ipv4() != vips[0].is_ipv4()) {
        return Err(ConfigError::invalid(
            format!("{key}[{i}]"),
            "mixes IPv4 and IPv6 in one service: define one service per family \
             (IPv6 callers already reach IPv4 addresses through their v4-mapped form)",
        ));
    }
    Ok(vips)
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

pub(super) fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}
