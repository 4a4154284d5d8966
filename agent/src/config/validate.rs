//! Raw file -> [`Config`], checking everything and naming the key of the first problem.
//! Pure: nothing here reads the machine. Binding cgroup paths to a node is [`super::node`].

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use sluice_common::{
    MAX_SERVICES, MAX_SLOTS, MAX_SLOTS_PER_VERSION, PPM,
    maps::{DEFAULT_TAG_SLOTS, MAX_TAG_SLOTS},
    slots::total_slots,
};

use address::{named, service_family, socket_addr, virtual_addresses};
use paths::{cgroup_path, check_roles, metrics_address, own_path};

use super::{
    BackendConfig, Config, ConfigError, DEFAULT_API_SOCKET, DEFAULT_METRICS_ADDRESS,
    DEFAULT_PIN_PATH, DEFAULT_STATE_PATH, Family, Selection, ServiceConfig, Target,
    bounds::{MAX_CONFIG_BYTES, check_document, read_regular_file},
    raw::{RawBackend, RawConfig, RawService},
};

/// Largest per-backend weight.
const MAX_WEIGHT: i64 = 1_000;

/// Reads and validates a configuration file: a regular file of at most
/// [`MAX_CONFIG_BYTES`].
pub fn parse(path: &Path) -> Result<Config, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = read_regular_file(path, MAX_CONFIG_BYTES).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ))
    })?;
    parse_str(&text)
}

/// Validates a configuration given as YAML text. The document is bounded (size, nesting,
/// what its aliases expand to) before it is deserialised.
pub fn parse_str(text: &str) -> Result<Config, ConfigError> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::Syntax(format!(
            "{} bytes; a configuration has at most {MAX_CONFIG_BYTES}",
            text.len()
        )));
    }
    check_document(text)?;
    let raw: RawConfig =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    validate(raw)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let cgroup = raw
        .cgroup
        .as_deref()
        .map(|p| cgroup_path("cgroup", p))
        .transpose()?;
    let cgroup_root = raw
        .cgroup_root
        .as_deref()
        .map(|p| own_path("cgroup_root", p))
        .transpose()?;
    let pin_path = own_path(
        "pin_path",
        raw.pin_path.as_deref().unwrap_or(DEFAULT_PIN_PATH),
    )?;
    let api_socket = own_path(
        "api_socket",
        raw.api_socket.as_deref().unwrap_or(DEFAULT_API_SOCKET),
    )?;
    let state_path = own_path(
        "state_path",
        raw.state_path.as_deref().unwrap_or(DEFAULT_STATE_PATH),
    )?;
    check_roles(&pin_path, &api_socket, &state_path)?;
    let metrics_address = metrics_address(
        raw.metrics_address
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_ADDRESS),
    )?;

    let socket_tag_slots = socket_tag_slots(raw.socket_tag_slots)?;
    let discovery = super::discovery::discovery(raw.discovery)?;
    let network_namespaces = super::drain::network_namespaces(raw.network_namespaces)?;
    let cluster = super::cluster::cluster(raw.cluster)?;
    let Some(raw_services) = raw.services else {
        return Err(ConfigError::invalid(
            "services",
            "missing: the file names no services (is it empty or cut short?); a \
             configuration that steers nothing says `services: []`",
        ));
    };
    if raw_services.len() > MAX_SERVICES as usize {
        return Err(ConfigError::invalid(
            "services",
            format!(
                "{} services, at most {MAX_SERVICES} are supported",
                raw_services.len()
            ),
        ));
    }
    let services = raw_services
        .into_iter()
        .enumerate()
        .map(|(i, s)| service(&format!("services[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    check_across_services(&services)?;
    if !raw.signals
        && let Some(i) = services.iter().position(|s| s.rollout.is_some())
    {
        return Err(ConfigError::invalid(
            format!("services[{i}].rollout"),
            "judges the canary on the kernel's signals, and `signals: false` turns them off",
        ));
    }
    if cluster.is_none()
        && let Some(i) = services.iter().position(|s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.step_nodes.iter().any(|n| *n != super::Nodes::All))
        })
    {
        return Err(ConfigError::invalid(
            format!("services[{i}].rollout.waves"),
            "chooses nodes by their labels, which only a `cluster:` block gives",
        ));
    }
    Ok(Config {
        cgroup,
        cgroup_root,
        pin_path,
        api_socket,
        metrics_address,
        signals: raw.signals,
        state_path,
        socket_tag_slots,
        discovery,
        network_namespaces,
        cluster,
        services,
    })
}

fn socket_tag_slots(raw: Option<u64>) -> Result<u32, ConfigError> {
    let Some(n) = raw else {
        return Ok(DEFAULT_TAG_SLOTS);
    };
    if !n.is_power_of_two() || n > u64::from(MAX_TAG_SLOTS) {
        return Err(ConfigError::invalid(
            "socket_tag_slots",
            format!("{n} must be a power of two from 1 to {MAX_TAG_SLOTS}"),
        ));
    }
    Ok(n as u32)
}

fn service(key: &str, raw: RawService) -> Result<ServiceConfig, ConfigError> {
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw.name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if !name_ok {
        return Err(ConfigError::invalid(
            format!("{key}.name"),
            format!(
                "{:?}: 1 to 63 characters of a-z, 0-9, '-', '_', '.'",
                raw.name
            ),
        ));
    }
    if raw.protocol != "tcp" {
        return Err(ConfigError::invalid(
            format!("{key}.protocol"),
            format!("{:?}: only \"tcp\" is supported", raw.protocol),
        ));
    }
    let vips = virtual_addresses(key, &raw.virtual_addresses)?;
    let family = service_family(key, raw.family.as_deref(), &vips)?;
    let selection = match raw.selection.as_str() {
        "random" => {
            if raw.salt.is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.salt"),
                    "only meaningful with selection: sticky",
                ));
            }
            Selection::Random
        }
        "sticky" => Selection::Sticky {
            salt: fnv1a64(raw.salt.as_deref().unwrap_or(&raw.name).as_bytes()),
        },
        other => {
            return Err(ConfigError::invalid(
                format!("{key}.selection"),
                format!("{other:?}: expected \"random\" or \"sticky\""),
            ));
        }
    };
    let canary_ppm = percent_to_ppm(&format!("{key}.canary_percent"), raw.canary_percent)?;
    let http1 = match raw.l7.as_str() {
        "http1" => true,
        "none" => false,
        other => {
            return Err(ConfigError::invalid(
                format!("{key}.l7"),
                format!("{other:?}: expected \"http1\" or \"none\""),
            ));
        }
    };
    let stable = backends(&format!("{key}.stable"), &raw.stable, family)?;
    if stable.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.stable"),
            "needs at least one backend: stable is where traffic goes when the canary cannot take it",
        ));
    }
    let canary = backends(&format!("{key}.canary"), &raw.canary, family)?;
    for (i, b) in canary.iter().enumerate() {
        if stable.iter().any(|s| s.target == b.target) {
            return Err(ConfigError::invalid(
                format!("{key}.canary[{i}].{}", target_key(&b.target)),
                format!("{} is also a stable backend", b.target),
            ));
        }
    }
    if raw.segment.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            format!("{key}.segment"),
            "is empty, so no caller could ever reach the canary; list the client cgroups, \
             or remove `segment` to let every caller",
        ));
    }
    let segment = raw
        .segment
        .map(|members| {
            members
                .iter()
                .enumerate()
                .map(|(i, p)| cgroup_path(&format!("{key}.segment[{i}]"), p))
                .collect::<Result<Vec<_>, ConfigError>>()
        })
        .transpose()?;
    let rollout = raw
        .rollout
        .map(|r| super::rollout::rollout(&format!("{key}.rollout"), r, http1))
        .transpose()?;
    if rollout.is_some() && canary_ppm != 0 {
        return Err(ConfigError::invalid(
            format!("{key}.canary_percent"),
            "the rollout sets the canary share; remove canary_percent (or the rollout)",
        ));
    }
    let drain = super::drain::drain(&format!("{key}.drain"), raw.drain)?;
    let max_connection_age = super::drain::max_connection_age(
        &format!("{key}.max_connection_age"),
        raw.max_connection_age.as_deref(),
    )?;
    Ok(ServiceConfig {
        name: raw.name,
        virtual_addresses: vips,
        family,
        selection,
        canary_ppm,
        stable,
        canary,
        segment,
        http1,
        rollout,
        drain,
        max_connection_age,
    })
}

/// The key a target was written under: `address` or `dns`.
fn target_key(t: &Target) -> &'static str {
    match t {
        Target::Address(_) => "address",
        Target::Name(_) => "dns",
    }
}

fn backends(
    key: &str,
    raw: &[RawBackend],
    family: Family,
) -> Result<Vec<BackendConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let target = match (&b.address, &b.dns) {
            (Some(text), None) => {
                if b.port.is_some() {
                    return Err(ConfigError::invalid(
                        format!("{k}.port"),
                        "goes with `dns`; an address carries its own port",
                    ));
                }
                let address = socket_addr(&format!("{k}.address"), text)?;
                if Family::of(address.ip()) != family {
                    return Err(ConfigError::invalid(
                        format!("{k}.address"),
                        format!(
                            "{address} is {} but the service's virtual addresses are {}",
                            Family::of(address.ip()).label(),
                            family.label()
                        ),
                    ));
                }
                Target::Address(address)
            }
            (None, Some(name)) => Target::Name(named(&k, name, b.port)?),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    k,
                    "gives both `address` and `dns`: a backend is one or the other",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    k,
                    "needs `address: ip:port` or `dns: name` with `port`",
                ));
            }
        };
        if !seen.insert(target.clone()) {
            return Err(ConfigError::invalid(
                format!("{k}.{}", target_key(&target)),
                format!("{target} is listed twice"),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&b.weight) {
            return Err(ConfigError::invalid(
                format!("{k}.weight"),
                format!("{} is out of range 1..={MAX_WEIGHT}", b.weight),
            ));
        }
        out.push(BackendConfig {
            target,
            weight: b.weight as u32,
        });
    }
    let slots = literal_slots(&out);
    if slots > u64::from(MAX_SLOTS_PER_VERSION) {
        return Err(ConfigError::invalid(
            key,
            format!("weights need {slots} slots after reduction, at most {MAX_SLOTS_PER_VERSION}"),
        ));
    }
    Ok(out)
}

/// Slots a version's literal backends take, with one for each name (the least a name that
/// resolves can take; what names take at run time is checked when their answers come).
fn literal_slots(b: &[BackendConfig]) -> u64 {
    let literal: Vec<u32> = b
        .iter()
        .filter(|b| matches!(b.target, Target::Address(_)))
        .map(|b| b.weight)
        .collect();
    let names = b.len() - literal.len();
    if names == 0 {
        u64::from(total_slots(&literal))
    } else {
        // With names the weights are spread over addresses, and the table is sized at run
        // time; literal backends still take at least one slot each.
        b.len() as u64
    }
}

fn percent_to_ppm(key: &str, percent: f64) -> Result<u32, ConfigError> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(ConfigError::invalid(
            key,
            format!("{percent} is out of range 0..=100"),
        ));
    }
    let ppm = ((percent * f64::from(PPM) / 100.0).round() as u32).min(PPM);
    if ppm == 0 && percent > 0.0 {
        return Err(ConfigError::invalid(
            key,
            format!("{percent} is below the 0.0001 % resolution and would be 0"),
        ));
    }
    Ok(ppm)
}

/// A percent from the control API, checked like the configuration's.
pub fn percent_to_ppm_checked(percent: f64) -> Result<u32, ConfigError> {
    percent_to_ppm("percent", percent)
}

fn check_across_services(services: &[ServiceConfig]) -> Result<(), ConfigError> {
    // An apply writes the new slot tables beside the old ones before it flips the services
    // to them: the kernel's slot map must hold both.
    let slots: u64 = services
        .iter()
        .map(|s| literal_slots(&s.stable) + literal_slots(&s.canary))
        .sum();
    let room = u64::from(MAX_SLOTS / 2);
    if slots > room {
        return Err(ConfigError::invalid(
            "services",
            format!(
                "the services' weights need {slots} backend slots in all; the kernel holds \
                 {MAX_SLOTS}, half of them for the generation an apply replaces: at most {room}"
            ),
        ));
    }
    let mut names = HashMap::new();
    let mut vips: HashMap<&Target, usize> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        if let Some(first) = names.insert(s.name.as_str(), i) {
            return Err(ConfigError::invalid(
                format!("services[{i}].name"),
                format!("{:?} is already the name of services[{first}]", s.name),
            ));
        }
        for (j, v) in s.virtual_addresses.iter().enumerate() {
            if let Some(first) = vips.insert(v, i) {
                return Err(ConfigError::invalid(
                    format!("services[{i}].virtual_addresses[{j}]"),
                    format!("{v} is already a virtual address of services[{first}]"),
                ));
            }
        }
    }
    // A backend that is itself a virtual address would be steered again by the next
    // connect of whoever reaches it: refuse loops outright.
    for (i, s) in services.iter().enumerate() {
        for (version, list) in [("stable", &s.stable), ("canary", &s.canary)] {
            for (j, b) in list.iter().enumerate() {
                if let Some(owner) = vips.get(&b.target) {
                    return Err(ConfigError::invalid(
                        format!("services[{i}].{version}[{j}].{}", target_key(&b.target)),
                        format!("{} is a virtual address (of services[{owner}])", b.target),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable, dependency-free hash for turning salts into numbers.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

mod address;
#[cfg(test)]
mod fuzz;
mod paths;
#[cfg(test)]
mod tests;
