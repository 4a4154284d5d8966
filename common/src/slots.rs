//! Per-backend weights as slot counts. A version's backends fill a slot table, each backend
//! as many slots as its weight divided by the weights' greatest common divisor, so weights
//! 30/70 take 10 slots, not 100. The agent builds the tables with this arithmetic and the
//! configuration checks their size with the same, so the two can never disagree.

/// Greatest common divisor; `gcd(0, b) == b`.
pub const fn gcd(a: u32, b: u32) -> u32 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

/// The divisor that turns these weights into slot counts (1 for no weights or all zero).
pub fn divisor(weights: &[u32]) -> u32 {
    let g = weights.iter().fold(0, |g, w| gcd(g, *w));
    if g == 0 { 1 } else { g }
}

/// Slots one backend of weight `weight` takes among backends whose weights have `divisor`.
pub const fn slots_of(weight: u32, divisor: u32) -> u32 {
    weight / divisor
}

/// Slots a whole version takes.
pub fn total_slots(weights: &[u32]) -> u32 {
    let d = divisor(weights);
    weights
        .iter()
        .fold(0u32, |n, w| n.saturating_add(slots_of(*w, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_reduce_by_their_gcd() {
        assert_eq!(gcd(30, 70), 10);
        assert_eq!(gcd(0, 7), 7);
        assert_eq!(total_slots(&[30, 70]), 10);
        assert_eq!(total_slots(&[1, 1, 1]), 3);
        assert_eq!(total_slots(&[1000, 999]), 1999);
        assert_eq!(total_slots(&[]), 0);
        assert_eq!(divisor(&[]), 1);
    }
}
