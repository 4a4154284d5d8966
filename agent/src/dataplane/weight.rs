//! `sluice weight`: one service's share written on all its virtual addresses, or on none.

use sluice_common::maps::VipKey;

use super::{DataplaneError, Maps};

/// Sets the share on every virtual address of a service; returns the previous share. A failed
/// write puts back the addresses already written, so the service never runs two shares.
pub fn set_weight(
    maps: &mut Maps,
    service: &str,
    vips: &[VipKey],
    ppm: u32,
) -> Result<u32, DataplaneError> {
    let mut before = Vec::with_capacity(vips.len());
    for vip in vips {
        let entry = maps
            .services
            .get(vip, 0)
            .map_err(|source| DataplaneError::Read {
                what: "the service entry",
                source,
            })?;
        before.push(entry);
    }
    for (i, (vip, entry)) in vips.iter().zip(&before).enumerate() {
        let mut next = *entry;
        next.canary_ppm = ppm;
        if let Err(source) = maps.services.insert(vip, next, 0) {
            let undo_failures = vips[..i]
                .iter()
                .zip(&before)
                .filter(|(v, old)| maps.services.insert(*v, **old, 0).is_err())
                .count();
            let left = if undo_failures == 0 {
                "the share is unchanged".to_owned()
            } else {
                format!(
                    "{undo_failures} of its {} virtual addresses keep the new share",
                    vips.len()
                )
            };
            return Err(DataplaneError::SetWeight {
                service: service.to_owned(),
                left,
                source: Box::new(source),
            });
        }
    }
    Ok(before.first().map_or(0, |s| s.canary_ppm))
}
