//! Prometheus export: `/metrics` (text format through the `prometheus` crate), `/ready`,
//! `/live`. The kernel counts; this module only sums (in the dataplane), windows and encodes.

mod export;
mod families;
mod rollout;
mod server;
mod window;

pub use export::encode;
pub use server::{Scrape, ServeError, serve};
pub use window::ShareWindows;
