//! Code the tool binaries (tally-bench, tally-chaos, `tally`) and the integration tests share,
//! kept out of the service crates:
//!
//! - [`rng`]: a seeded, reproducible random number generator and a Zipf sampler.
//! - [`nginx`]: `nginx/local.conf.template` rendered the way `deploy/local/stack.sh` does.

pub mod nginx;
pub mod rng;
