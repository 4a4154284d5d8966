//! The controller's clock, injected so that intervals and deadlines are unit-tested without
//! sleeping. Intervals run on the monotonic clock; deadlines and decision times on the wall
//! clock, because they are persisted and must mean the same after a restart.

use std::time::Instant;

pub trait Clock: Send + Sync {
    fn now(&self) -> Moment;
}

/// One reading of both clocks, taken once per tick or command so every decision in it agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    pub at: Instant,
    pub unix_ms: u64,
}

/// The machine's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Moment {
        Moment {
            at: Instant::now(),
            unix_ms: unix_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
