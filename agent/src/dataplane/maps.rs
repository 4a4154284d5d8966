//! Opening the maps: pinned by name under the pin directory, so a restarted agent adopts
//! the very maps (and counters) the kernel programs have been using.

use std::path::Path;

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use sluice_common::{
    maps::{Backend, SegmentKey, Service, SlotKey, SockTag, TAG_SLOT_MASK, TagSlot, VipKey, names},
    metrics::{Metrics, MetricsKey, metrics_array_index},
};

use super::DataplaneError;
use crate::sys;

/// Typed handles on every map the agent writes or reads.
pub struct Maps {
    pub services: HashMap<MapData, VipKey, Service>,
    pub slots: HashMap<MapData, SlotKey, Backend>,
    pub segments: HashMap<MapData, SegmentKey, u8>,
    pub steer_counters: PerCpuArray<MapData, u64>,
    /// Golden signals of the lowest service ids, then of the others (see
    /// `sluice_common::metrics`): use [`Maps::metrics`] and friends, which pick the map.
    metrics_array: PerCpuArray<MapData, Metrics>,
    metrics_hash: PerCpuHashMap<MapData, MetricsKey, Metrics>,
    pub vip_ports: Array<MapData, u64>,
    /// Possible CPUs: the length of every per-CPU value.
    pub ncpus: usize,
}

fn metrics_key(service: u32, version: u8) -> MetricsKey {
    MetricsKey {
        service,
        version,
        _pad: [0; 3],
    }
}

impl Maps {
    /// Zeroed golden signals of one CPU set, for a fresh (service, version).
    fn zeroed_metrics(&self) -> Result<PerCpuValues<Metrics>, MapError> {
        PerCpuValues::try_from(vec![Metrics::default(); self.ncpus]).map_err(MapError::IoError)
    }

    /// Starts a (service, version)'s golden signals from zero: counters an earlier owner of
    /// the id left are not carried over.
    pub fn reset_metrics(&mut self, service: u32, version: u8) -> Result<(), MapError> {
        let zeros = self.zeroed_metrics()?;
        match metrics_array_index(service, version) {
            Some(index) => self.metrics_array.set(index, zeros, 0),
            None => self
                .metrics_hash
                .insert(metrics_key(service, version), zeros, 0),
        }
    }

    /// The service is gone: its signals stop. A hash entry is removed (the hooks then count
    /// nothing for sockets still tagged with the id); an array entry is zeroed, and
    /// [`Maps::reset_metrics`] zeroes it again when the id is handed out anew.
    pub fn remove_metrics(&mut self, service: u32, version: u8) -> Result<(), MapError> {
        match metrics_array_index(service, version) {
            Some(index) => {
                let zeros = self.zeroed_metrics()?;
                self.metrics_array.set(index, zeros, 0)
            }
            None => self.metrics_hash.remove(&metrics_key(service, version)),
        }
    }

    /// A (service, version)'s golden signals, CPU by CPU.
    pub fn metrics(&self, service: u32, version: u8) -> Result<PerCpuValues<Metrics>, MapError> {
        match metrics_array_index(service, version) {
            Some(index) => self.metrics_array.get(&index, 0),
            None => self.metrics_hash.get(&metrics_key(service, version), 0),
        }
    }
}

/// (name, key size, value size) of each pinned map: checked before adopting a pin.
const LAYOUTS: [(&str, usize, usize); 10] = [
    (names::SERVICES, size_of::<VipKey>(), size_of::<Service>()),
    (names::SLOTS, size_of::<SlotKey>(), size_of::<Backend>()),
    (names::SEGMENTS, size_of::<SegmentKey>(), size_of::<u8>()),
    (names::TAG_SLOTS, size_of::<u32>(), size_of::<TagSlot>()),
    (names::SOCK_TAGS, size_of::<u64>(), size_of::<SockTag>()),
    (names::TAG_FILTER, size_of::<u32>(), size_of::<u32>()),
    (names::STEER_COUNTERS, size_of::<u32>(), size_of::<u64>()),
    (
        names::METRICS,
        size_of::<MetricsKey>(),
        size_of::<Metrics>(),
    ),
    (names::METRICS_ARRAY, size_of::<u32>(), size_of::<Metrics>()),
    (names::VIP_PORTS, size_of::<u32>(), size_of::<u64>()),
];

/// Makes sure `pin_root` is on bpffs (mounting /sys/fs/bpf if need be) and `pin_dir` exists,
/// and refuses pins of another ABI.
pub fn prepare_pin_dir(pin_root: &Path, pin_dir: &Path) -> Result<(), DataplaneError> {
    let bpffs_root = pin_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let on_bpffs = sys::is_bpffs(bpffs_root).unwrap_or(false);
    if !on_bpffs {
        // The usual layout: /sys/fs/bpf exists but nothing is mounted there.
        let mount_at = Path::new("/sys/fs/bpf");
        if !pin_root.starts_with(mount_at) {
            return Err(DataplaneError::Bpffs {
                path: pin_root.to_owned(),
                source: std::io::Error::other("not under /sys/fs/bpf, mount bpffs there yourself"),
            });
        }
        sys::mount_bpffs(mount_at).map_err(|source| DataplaneError::Bpffs {
            path: mount_at.to_owned(),
            source,
        })?;
        tracing::info!(path = %mount_at.display(), "mounted bpffs");
    }
    if let Ok(entries) = std::fs::read_dir(pin_root) {
        for e in entries.flatten() {
            if e.path() != pin_dir && e.file_name().to_string_lossy().starts_with('v') {
                return Err(DataplaneError::ForeignAbi(e.path()));
            }
        }
    }
    for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
        std::fs::create_dir_all(&dir)
            .map_err(|source| DataplaneError::PinDir { path: dir, source })?;
    }
    Ok(())
}

/// Loads the object, re-using pinned maps where they exist. `tag_slots` (a power of two)
/// sizes `SLUICE_TAG_SLOTS`; pinned slots must have that size. With `signals`, the signal
/// programs get the layout of the kernel fields they read from the kernel's BTF.
pub fn load(
    object: &[u8],
    pin_dir: &Path,
    tag_slots: u32,
    signals: bool,
) -> Result<(aya::Ebpf, Maps), DataplaneError> {
    let map_dir = pin_dir.join("maps");
    for (name, key, value) in LAYOUTS {
        check_pinned_layout(&map_dir.join(name), name, key as u32, value as u32)?;
    }
    let slots_pin = map_dir.join(names::TAG_SLOTS);
    if slots_pin.exists() {
        let pinned = aya::maps::MapInfo::from_pin(&slots_pin)
            .map_err(|source| DataplaneError::Map {
                name: names::TAG_SLOTS,
                source,
            })?
            .max_entries();
        if pinned != tag_slots {
            return Err(DataplaneError::TagSlots {
                pinned,
                configured: tag_slots,
            });
        }
    }
    // The signal programs read kernel structs in place: without their layout, refuse to
    // start rather than load them (steering alone needs none of it).
    let kernel_fields = if signals {
        let btf = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| DataplaneError::Btf(e.to_string()))?;
        super::btf::kernel_field_offsets(&btf).map_err(DataplaneError::Btf)?
    } else {
        Vec::new()
    };
    let mask = tag_slots - 1;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::TAG_SLOTS, tag_slots)
        .override_global(TAG_SLOT_MASK, &mask, true);
    for (global, offset) in &kernel_fields {
        loader.override_global(global, offset, true);
    }
    let paths: Vec<_> = LAYOUTS
        .iter()
        .map(|(n, ..)| (*n, map_dir.join(n)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(DataplaneError::Load)?;
    let maps = Maps {
        services: typed(&mut ebpf, names::SERVICES)?,
        slots: typed(&mut ebpf, names::SLOTS)?,
        segments: typed(&mut ebpf, names::SEGMENTS)?,
        steer_counters: typed(&mut ebpf, names::STEER_COUNTERS)?,
        metrics_array: typed(&mut ebpf, names::METRICS_ARRAY)?,
        metrics_hash: typed(&mut ebpf, names::METRICS)?,
        vip_ports: typed(&mut ebpf, names::VIP_PORTS)?,
        ncpus: aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?,
    };
    Ok((ebpf, maps))
}

fn check_pinned_layout(
    path: &Path,
    name: &'static str,
    key: u32,
    value: u32,
) -> Result<(), DataplaneError> {
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(path)
        .map_err(|source| DataplaneError::Map { name, source })?;
    let found = (info.key_size(), info.value_size());
    if found != (key, value) {
        return Err(DataplaneError::MapLayout {
            name,
            found,
            want: (key, value),
        });
    }
    Ok(())
}

fn typed<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}
