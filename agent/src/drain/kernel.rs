//! What the drainer reads of the kernel, through the pinned maps (its own handles, so it
//! runs on a thread of its own): each service's canary share, and a socket's tag.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use sluice_common::maps::{Service, SockTag, TagSlot, VipKey, names};

pub struct Kernel {
    services: HashMap<MapData, VipKey, Service>,
    slots: Array<MapData, TagSlot>,
    tags: HashMap<MapData, u64, SockTag>,
    slot_mask: u32,
}

impl Kernel {
    /// Opens the maps pinned under `pin_dir` (the agent's ABI directory).
    pub fn open(pin_dir: &Path) -> Result<Self, MapError> {
        let dir = pin_dir.join("maps");
        let services =
            HashMap::try_from(Map::HashMap(MapData::from_pin(dir.join(names::SERVICES))?))?;
        let slots: Array<MapData, TagSlot> =
            Array::try_from(Map::Array(MapData::from_pin(dir.join(names::TAG_SLOTS))?))?;
        let tags = HashMap::try_from(Map::HashMap(MapData::from_pin(dir.join(names::SOCK_TAGS))?))?;
        let slot_mask = slots.len().saturating_sub(1);
        Ok(Self {
            services,
            slots,
            tags,
            slot_mask,
        })
    }

    /// The canary share the kernel steers a virtual address with now (ppm); `None` if the
    /// address is not in the map.
    pub fn canary_ppm(&self, vip: &VipKey) -> Option<u32> {
        self.services.get(vip, 0).ok().map(|s| s.canary_ppm)
    }

    /// The tag of the socket with this cookie, if it is a steered one: its slot first, then
    /// the hash (where the kernel puts a tag whose slot a live socket holds).
    pub fn tag(&self, cookie: u64) -> Option<SockTag> {
        if let Ok(slot) = self.slots.get(&(cookie as u32 & self.slot_mask), 0)
            && slot.cookie == cookie
        {
            return Some(slot.tag);
        }
        self.tags.get(&cookie, 0).ok()
    }
}
