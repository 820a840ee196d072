//! The GPU side: one device layer ([`device`]) used by every host module, the adapters
//! ([`adapters`]), and one host module per shader family: [`glm_stat`] (the GPU engine) and
//! [`spatial`] (labels, clusters and TFCE of permutation maps on the device).
pub mod adapters;
pub mod device;
pub mod glm_stat;
pub mod spatial;

pub use adapters::{
    describe_adapters, hardware_adapter_available, list_adapters, resolve_adapters, AdapterChoice, AdapterSpec,
    AdapterSummary,
};
pub use device::Device;
pub use glm_stat::GpuEngine;
pub use spatial::GpuSpatial;
