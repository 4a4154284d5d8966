//! What the kernel keeps of the agent's socket tags, read from its pinned maps.

use std::time::{Duration, Instant};

use super::Agent;

impl Agent {
    /// The live tags the kernel's filter counts (`SLUICE_TAG_FILTER`: two 16-bit counters a
    /// word). It must always equal [`Agent::sock_tags`].
    pub fn tag_filter_count(&self) -> u64 {
        let path = self.maps_dir().join("SLUICE_TAG_FILTER");
        let dump = crate::bpftool(&["map", "dump", "pinned", &path.display().to_string()]);
        dump.as_array()
            .expect("array dump")
            .iter()
            .map(|e| {
                let v = &e["value"];
                let word = v.as_u64().unwrap_or_else(|| {
                    // Without BTF formatting: little-endian hex bytes.
                    v.as_array()
                        .expect("value bytes")
                        .iter()
                        .rev()
                        .map(|b| {
                            u64::from_str_radix(
                                b.as_str().expect("hex").trim_start_matches("0x"),
                                16,
                            )
                            .expect("hex byte")
                        })
                        .fold(0, |acc, b| acc << 8 | b)
                });
                (word & 0xffff) + (word >> 16)
            })
            .sum()
    }

    /// Waits (up to 5 s: a connection's last packets may still be on their way) until the
    /// kernel keeps no tag, and checks that the filter counts exactly that.
    pub fn assert_tags_gone(&self) {
        let start = Instant::now();
        while self.sock_tags() != 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.sock_tags(), 0, "tags left behind");
        assert_eq!(
            self.tag_filter_count(),
            0,
            "the filter counts what the maps hold"
        );
    }

    /// The steered sockets the kernel still keeps a tag for, in their slot or in the hash.
    pub fn sock_tags(&self) -> usize {
        self.tags_in_slots() + self.tags_in_hash()
    }

    /// Held slots of `SLUICE_TAG_SLOTS`, read directly (a bpftool dump of 65 536 slots takes
    /// seconds).
    pub fn tags_in_slots(&self) -> usize {
        let data = aya::maps::MapData::from_pin(self.maps_dir().join("SLUICE_TAG_SLOTS"))
            .expect("tag slots");
        let slots: aya::maps::Array<_, sluice_common::maps::TagSlot> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("tag slots array");
        slots
            .iter()
            .map(|s| s.expect("read a tag slot"))
            .filter(|s| s.cookie != 0)
            .count()
    }

    /// Entries of `SLUICE_SOCK_TAGS`: tags whose slot another live socket holds.
    pub fn tags_in_hash(&self) -> usize {
        let path = self.maps_dir().join("SLUICE_SOCK_TAGS");
        crate::bpftool(&["map", "dump", "pinned", &path.display().to_string()])
            .as_array()
            .map_or(0, Vec::len)
    }
}
