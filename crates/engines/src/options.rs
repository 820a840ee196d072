//! How engines are chosen and tuned: option structs the binary fills from its flags and
//! records in the sidecar. Nothing here is read from the environment.
use serde::{Deserialize, Serialize};
use voxflip_shaders::GlmKernel;

/// Which engine runs the permutations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A hardware GPU when one exists, else the CPU engine.
    #[default]
    Auto,
    /// The GPU engine (a software adapter such as lavapipe is accepted when asked for).
    Gpu,
    /// The multithreaded CPU engine.
    Cpu,
}

/// Where the spatial statistics (TFCE, clusters) of the GPU engine's maps run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpatialPlacement {
    /// On the GPU engine's adapter when it is hardware; on the CPU after a software adapter
    /// (lavapipe), where the CPU is far faster.
    #[default]
    Auto,
    /// On the GPU engine's adapter, software adapters included (the tests run the spatial
    /// shaders on lavapipe this way).
    Gpu,
    /// Always on the CPU.
    Cpu,
}

/// How an engine forms the coefficients u = Q' P_j E of a batch (DESIGN.md, "Sign flips
/// without multiplications").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// The table-driven product where the permutation set allows it (sign flips; relabelings
    /// when the rows of Q take few distinct values), else the matrix product.
    #[default]
    Auto,
    /// Always the matrix product (the general path and the reference).
    Gemm,
    /// The table-driven product; a set it cannot serve runs the matrix product.
    Table,
}

/// Limits that size the GPU engine's work, overridden by tests so that small problems
/// exercise chunking, dispatch splitting and grouped read-back. None: from the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTuning {
    /// Voxels per chunk of E at most.
    pub chunk_voxels: Option<usize>,
    /// Multiply-adds per dispatch and per submission at most.
    pub max_macs_per_dispatch: Option<u64>,
    /// Bytes of maps read back at once at most.
    pub max_maps_bytes: Option<u64>,
    /// Permutations per batch (instead of the size that keeps per-batch costs small).
    pub batch: Option<usize>,
}

/// The GPU engine's options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuOptions {
    /// `--adapter` as typed (see [`crate::gpu::AdapterSpec`]): the adapter whose name (or
    /// `name (backend)`) contains this, case-insensitive, or `#K` for the K-th adapter of
    /// `voxflip devices`; `all` for every adapter the backend allows, or a comma-separated
    /// list of such patterns for several. None: the best one.
    pub adapter: Option<String>,
    /// The glm_stat kernel; None: the fastest the adapter allows.
    #[serde(serialize_with = "kernel_name", deserialize_with = "kernel_by_name")]
    pub kernel: Option<GlmKernel>,
    /// Compile the Wide kernels without wgpu's runtime checks (benchmarks; see
    /// `GpuEngine::set_unchecked`).
    pub unchecked: bool,
    /// Time every glm_stat pass with GPU timestamps, where the adapter has them.
    pub timestamps: bool,
    /// Where the spatial statistics of this engine's maps run.
    pub spatial: SpatialPlacement,
    pub tuning: GpuTuning,
    /// Test harness: the device fails (as if lost) at this batch, counting from 1, and stays
    /// failed, so that the fallback to the CPU can be tested on any adapter.
    pub fail_at_batch: Option<usize>,
}

fn kernel_name<S: serde::Serializer>(k: &Option<GlmKernel>, s: S) -> Result<S::Ok, S::Error> {
    match k {
        Some(k) => s.serialize_some(k.name()),
        None => s.serialize_none(),
    }
}

/// The kernel a sidecar names (see `kernel_name`).
fn kernel_by_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<GlmKernel>, D::Error> {
    let name: Option<String> = Option::deserialize(d)?;
    name.map(|n| GlmKernel::parse(&n).ok_or_else(|| serde::de::Error::custom(format!("no glm kernel {n}")))).transpose()
}

/// Everything that chooses and configures the engines of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineOptions {
    pub backend: Backend,
    pub gpu: GpuOptions,
    /// The CPU engine runs permutations too, beside the GPU adapters (`--with-cpu`; see
    /// [`crate::make_engines`] and [`crate::Scheduler`] for how the work is shared).
    pub with_cpu: bool,
    /// Table-driven or matrix product, on every engine of the run.
    #[serde(default)]
    pub product: Product,
}

impl EngineOptions {
    /// Whether these options ask for several engines: `--adapter all`, a list of adapters,
    /// or `--with-cpu`. (The engines made may still be one: `all` on one adapter.)
    pub fn wants_several(&self) -> bool {
        self.with_cpu || crate::gpu::AdapterSpec::parse(self.gpu.adapter.as_deref()).is_multi()
    }
}
