//! Rialto's simulator: simulated PSPs (in-process, [`psp::SimPsp`], and over HTTP,
//! [`server`]), the PSP configuration shared by `rialto serve`, `rialto psp-sim` and scenario
//! files ([`spec::PspSpec`]), and the load generator behind `rialto sim` ([`load`] over its
//! own HTTP [`client`], [`scenario`], [`report`]), with what it learns from a remote target
//! ([`remote`]). Load always goes through Rialto's real merchant HTTP API.

pub mod psp;
pub mod server;
pub mod spec;

pub use psp::{Incident, IncidentKind, Latency, SimConfig, SimPsp};
pub mod client;
pub mod load;
pub mod remote;
pub mod report;
pub mod scenario;
