//! The GPU engine: wgpu compute shaders for the permutation GLM (DESIGN.md, "The GLM and
//! Freedman–Lane, in the form the kernels use").
//!
//! `prepare` uploads Q, E and ||E||^2 once; E is cut into voxel chunks small enough for one
//! storage binding (lavapipe allows 128 MiB, many GPUs 2-4 GiB), and every batch runs
//! glm_stat over (permutation sub-batch x chunk) dispatches. Each dispatch is bounded in work
//! so that no single submission can trip a display driver's watchdog; the submissions of a
//! batch are queued back to back and the device is polled (and its errors collected) once per
//! batch, with the results' readback. Any wgpu error is returned typed ([`EngineError`]: device
//! lost, out of memory, unsupported) and the engine refuses further work, so a caller sees an
//! error, never a silently wrong map, and can continue on the CPU from the batch that failed;
//! a caller's mistake (a buffer of the wrong size, a batch before `prepare`) is `Invalid` and
//! leaves the engine usable.
//!
//! glm_stat comes in four kernels ([`GlmKernel`]), chosen per adapter: `Wide128`
//! (`shaders/glm_stat_wide.wgsl`, 8 x 4 register blocks over 64 x 64 workgroup tiles) on
//! hardware, else `Wide` (the same, 128 x 64 tiles), else `Tiles` (`glm_stat.wgsl`, 4 x 4
//! blocks, 32 x 64 tiles) where the adapter's workgroup limits are too small for them;
//! `Direct` (`glm_stat.wgsl` reading storage directly) on software adapters, where lavapipe
//! makes workgroup memory slow. [`GpuOptions::kernel`] or [`GpuEngine::set_kernel`] overrides
//! the choice. All give the same sums in the same order; the CPU ports in the shaders crate
//! are the oracle for each (the GPU twin tests).
//!
//! Voxelwise regressors (randomise `--vxl`; [`ContrastProblem::voxel_qbasis`]) run
//! `glm_stat_voxelwise.wgsl` instead: every chunk also holds its voxels' bases (n x q floats
//! a voxel, so the chunks are planned for that buffer: 228,000 voxels of N = 58, q = 3 are
//! 159 MB, two chunks under lavapipe's 128 MiB bindings), and the dispatches, reductions and
//! read-back are those of the other kernels.
use super::adapters::{select_adapter, AdapterChoice};
use super::device::Device;
use crate::error::{EngineError, Result};
use crate::options::{GpuOptions, GpuTuning, Product};
use crate::BatchResult;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use voxflip_shaders::glm_stat::{self, GlmKernel, GlmParams, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC, KIND_F, KIND_T, TV};
use voxflip_shaders::glm_stat_table;
use voxflip_shaders::glm_stat_voxelwise;
use voxflip_shaders::keys::value_of;
use voxflip_stats::{ContrastProblem, PermKind, PermSet, StatKind, VarianceSmoothing};

/// Largest E chunk we allocate even where the limits allow more: leaves room on a 4 GiB card
/// for the staging copy wgpu makes on upload and for the maps buffer.
const E_CHUNK_CAP_BYTES: u64 = 1 << 30;
/// Largest maps buffer (permutations x chunk voxels) per readback.
const MAPS_CAP_BYTES: u64 = 256 << 20;
/// Multiply-adds per dispatch: 2^31 (~4 GFLOP) keeps a dispatch far under the ~2 s
/// watchdogs of Windows (TDR) and desktop Linux even on a weak integrated GPU.
const MAX_MACS_PER_DISPATCH: u64 = 1 << 31;
/// The same bound on discrete GPUs, whose slowest still run 2^33 multiply-adds far inside a
/// watchdog: four times fewer dispatches, and one E chunk where 2^31 would cut a brain in
/// two for the 128-permutation tiles of the `Wide` kernel.
const MAX_MACS_PER_DISPATCH_DISCRETE: u64 = 1 << 33;
/// Multiply-adds a batch should hold so that per-batch costs (upload of permutation words,
/// readback of maxima and counts, synchronisation) stay small against the product.
const TARGET_MACS_PER_BATCH: f64 = (1u64 << 34) as f64;
/// The same on hardware adapters, where the product is so fast that 2^34 (640 permutations
/// of the driving study) would leave the per-batch uploads, readback and host round trip a
/// large share of the time; 2^37 gives 5120.
const TARGET_MACS_PER_BATCH_HARDWARE: f64 = (1u64 << 37) as f64;

/// Why an adapter cannot run glm_stat, or None if it can.
fn unsuitable(a: &wgpu::Adapter) -> Option<String> {
    let l = a.limits();
    if !a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        return Some("no compute shaders".into());
    }
    // wgpu does not check workgroup storage against the limit itself (lavapipe: 32 KiB), so
    // kernel_unsupported does. The Tiles kernel (within WebGPU's minimum limits) is the
    // minimum; Wide is used only where it fits too.
    if let Some(why) = kernel_unsupported(&l, GlmKernel::Tiles) {
        return Some(why);
    }
    if l.max_storage_buffers_per_shader_stage < 7 {
        return Some("fewer than 7 storage buffers per stage".into());
    }
    None
}

/// Why `kernel` cannot run under `l` (workgroup memory and size), or None if it can.
fn kernel_unsupported(l: &wgpu::Limits, kernel: GlmKernel) -> Option<String> {
    let what = format!("glm_stat {}", kernel.name());
    workgroup_unsupported(l, &what, kernel.workgroup_storage_bytes(), kernel.workgroup_size())
}

/// Why a kernel `what` with `bytes` of workgroup memory and workgroups of `x` x `y` cannot
/// run under `l`, or None (wgpu does not check workgroup memory against the limit itself:
/// lavapipe allows 32 KiB).
fn workgroup_unsupported(l: &wgpu::Limits, what: &str, bytes: u32, (x, y): (u32, u32)) -> Option<String> {
    if l.max_compute_workgroup_storage_size < bytes {
        Some(format!("{what}: workgroup storage {} B < {bytes} B needed", l.max_compute_workgroup_storage_size))
    } else if l.max_compute_invocations_per_workgroup < x * y
        || l.max_compute_workgroup_size_x < x
        || l.max_compute_workgroup_size_y < y
    {
        Some(format!("{what}: workgroups of {x}x{y} not supported"))
    } else {
        None
    }
}

/// The glm_stat kernel for an adapter: `Direct` on software adapters, else the first of
/// [`TILED_PREFERENCE`] that its limits allow.
fn default_kernel(info: &wgpu::AdapterInfo, l: &wgpu::Limits) -> GlmKernel {
    if info.device_type == wgpu::DeviceType::Cpu {
        GlmKernel::Direct
    } else {
        preferred_tiled(l)
    }
}

/// Shared-tiles kernels in order of preference, fastest first on the hardware they were timed
/// on (the README has the numbers; the ignored kernel timing test reproduces them). Wide128
/// remains for adapters whose workgroup limits refuse Wide's 256 invocations or 25 KiB of
/// workgroup memory, Tiles for those that refuse both.
const TILED_PREFERENCE: [GlmKernel; 3] = [GlmKernel::Wide, GlmKernel::Wide128, GlmKernel::Tiles];

fn preferred_tiled(l: &wgpu::Limits) -> GlmKernel {
    TILED_PREFERENCE.into_iter().find(|&k| kernel_unsupported(l, k).is_none()).unwrap_or(GlmKernel::Tiles)
}

/// Voxels per chunk of E for `n` rows and `q` columns of Q under `limits`: the chunk's largest
/// buffer (`floats_per_voxel` floats a voxel: n for E, n q for the bases of voxelwise
/// regressors) and its [ss | observed] pair must each fit one storage binding (and at most
/// 1 GiB, leaving room for wgpu's upload staging on a 4 GiB card), the grid must stay within
/// the workgroups-per-dimension limit, and one row of permutation tiles (`tile_perms` each)
/// over the chunk must fit the per-dispatch work bound. A multiple of the voxel tile where
/// possible; 0 if not even one voxel fits.
pub(crate) fn plan_chunk_voxels(
    limits: &wgpu::Limits,
    n: usize,
    q: usize,
    floats_per_voxel: usize,
    max_macs_per_dispatch: u64,
    tile_perms: u32,
) -> usize {
    let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    let cap = binding.min(E_CHUNK_CAP_BYTES);
    // max(2): the [ss | observed] buffer (2 chunk floats) must fit the binding too.
    let mut chunk_v = (cap / (4 * floats_per_voxel.max(n).max(2) as u64)) as usize;
    chunk_v = chunk_v.min(limits.max_compute_workgroups_per_dimension as usize * TV as usize);
    let tile_row = (max_macs_per_dispatch / (n.max(1) as u64 * q.max(1) as u64 * tile_perms as u64)) as usize;
    chunk_v = chunk_v.min(tile_row.max(TV as usize));
    if chunk_v >= TV as usize {
        chunk_v -= chunk_v % TV as usize;
    }
    chunk_v
}

/// A compiled glm_stat variant and its (automatic) bind group layout.
type Kernel = (wgpu::ComputePipeline, wgpu::BindGroupLayout);

/// The glm_stat pipeline of `kernel` with its row-source handling fixed (the `SHARED_TILES`
/// and `HAS_SRC` overrides in the shaders). `unchecked` (the Wide kernels only; see
/// [`GpuEngine::set_unchecked`]) compiles without wgpu's injected index clamps and loop bounds.
fn build_pipeline(device: &wgpu::Device, kernel: GlmKernel, has_src: bool, unchecked: bool) -> Kernel {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some("glm_stat"),
        source: wgpu::ShaderSource::Wgsl(kernel.wgsl_source().into()),
    };
    let module = if matches!(kernel, GlmKernel::Wide | GlmKernel::Wide128) {
        // The Wide kernels are built without wgpu's forced loop bounding (a counter and a
        // break added to every loop, which keeps the driver from unrolling and pipelining the
        // row loop; the README gives what it cost), bounds checks still on. With `unchecked`
        // the bounds checks go too.
        //
        // SAFETY (wgpu's contract for trusted modules). Every loop terminates: glm_stat_wide
        // loops over k < q, m0 < n in steps of KT, kk < KT and r < A_LOADS / E_LOADS, all
        // bounded by uniforms or constants, with n < 2^30 (E must fit one binding). Without
        // bounds checks (`unchecked` only): the shader indexes its workgroup arrays with
        // values bounded by its constants (kk < KT, tx < WG_V, ty < WG_P, lidx < WG_SIZE,
        // r < A_LOADS / E_LOADS) and clamps every storage index itself (min(.., n - 1),
        // min(.., vc - 1), min(p, n_perm - 1)) into buffers that run_inner sizes from the same
        // parameters, and run_glm_stat checks a caller's buffers against the parameters.
        let checks = if unchecked {
            wgpu::ShaderRuntimeChecks::unchecked()
        } else {
            wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() }
        };
        unsafe { device.create_shader_module_trusted(desc, checks) }
    } else {
        device.create_shader_module(desc)
    };
    pipeline_of(device, "glm_stat", &module, &kernel.overrides(has_src))
}

/// The compute pipeline of `module`'s `main` with its override `constants`, and its bind
/// group layout.
fn pipeline_of(device: &wgpu::Device, label: &str, module: &wgpu::ShaderModule, constants: &[(&str, f64)]) -> Kernel {
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // The shaders initialise the workgroup memory they read.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    (pipeline, layout)
}

/// Host-side marker in [`GlmParams::flags`]: the dispatch runs the table-driven product
/// (`glm_stat_table.wgsl`). The shaders never read this bit.
const FLAG_TABLE: u32 = 1 << 31;

/// Why the adapter's limits refuse `glm_stat_table.wgsl`, or None.
fn table_unsupported(l: &wgpu::Limits) -> Option<String> {
    let size = (glm_stat_table::WG_V, glm_stat_table::WG_P);
    workgroup_unsupported(l, "glm_stat_table", glm_stat_table::WORKGROUP_STORAGE_BYTES, size)
}

/// Host-side marker in [`GlmParams::flags`]: the dispatch runs glm_stat_voxelwise (each
/// voxel's own basis, read from the chunk's bases buffer). The shaders never read this bit.
const FLAG_VOXELWISE: u32 = 1 << 30;

/// The glm_stat_voxelwise pipeline with its row-source handling fixed (`HAS_SRC`).
fn build_voxelwise_pipeline(device: &wgpu::Device, has_src: bool) -> Kernel {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("glm_stat_voxelwise"),
        source: wgpu::ShaderSource::Wgsl(glm_stat_voxelwise::wgsl_source().into()),
    });
    pipeline_of(device, "glm_stat_voxelwise", &module, &glm_stat_voxelwise::overrides(has_src))
}

/// Why the adapter's limits refuse `glm_stat_voxelwise.wgsl`, or None.
fn voxelwise_unsupported(l: &wgpu::Limits) -> Option<String> {
    let size = (glm_stat_voxelwise::WG_SIZE, 1);
    workgroup_unsupported(l, "glm_stat_voxelwise", glm_stat_voxelwise::WORKGROUP_STORAGE_BYTES, size)
}

/// The glm_stat_table pipeline for blocks of `bits` rows.
fn build_table_pipeline(device: &wgpu::Device, bits: u32) -> Kernel {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("glm_stat_table"),
        source: wgpu::ShaderSource::Wgsl(glm_stat_table::wgsl_source().into()),
    });
    pipeline_of(device, "glm_stat_table", &module, &glm_stat_table::overrides(bits))
}

/// Resident data of one chunk of voxels.
struct Chunk {
    v0: usize,
    vc: usize,
    /// E[:, v0..v0+vc], n x vc row-major.
    e: wgpu::Buffer,
    /// [ss | observed], 2 vc floats; observed rewritten per batch.
    vox: wgpu::Buffer,
    /// Exceedance counts, vc u32.
    counts: wgpu::Buffer,
    /// Voxelwise regressors: the chunk's bases, (n x q) x vc (glm_stat_voxelwise's layout).
    bases: Option<wgpu::Buffer>,
}

struct Resident {
    n: usize,
    v: usize,
    q: usize,
    s: usize,
    kind: StatKind,
    dof: f32,
    /// Each voxel has its own basis (voxelwise regressors): glm_stat_voxelwise runs.
    voxelwise: bool,
    /// ||E[:, v]||^2 on the host, for variance smoothing's residual variance.
    ss: Vec<f32>,
    qbuf: wgpu::Buffer,
    chunks: Vec<Chunk>,
    chunk_v: usize,
    batch: usize,
}

/// The GPU engine (see the module docs).
pub struct GpuEngine {
    device: Device,
    /// glm_stat variants by `has_src` (without / with row sources), built on first use.
    kernels: [Option<Kernel>; 2],
    /// glm_stat_voxelwise variants by `has_src`, built on first use.
    voxelwise_kernels: [Option<Kernel>; 2],
    /// Which glm_stat kernel runs.
    glm_kernel: GlmKernel,
    /// Table-driven or matrix product ([`GpuEngine::set_product`]).
    product: Product,
    /// The glm_stat_table pipeline and the block size it was built for, on first use.
    table_kernel: Option<(u32, Kernel)>,
    /// Wide kernels compiled without wgpu's runtime checks (see `set_unchecked`).
    unchecked: bool,
    /// Set once the device failed: later calls fail fast rather than trust a broken device.
    broken: Option<EngineError>,
    state: Option<Resident>,
    /// Limits that size the work; tests shrink them (see [`GpuTuning`]). Take effect at the
    /// next `prepare`.
    pub tuning: GpuTuning,
    /// GPU timestamps around every glm_stat pass ([`GpuOptions::timestamps`], where the
    /// adapter has TIMESTAMP_QUERY): the kernels' own time, for benchmarks.
    timing: Option<KernelTiming>,
    /// [`GpuOptions::fail_at_batch`], and the batches run so far.
    fail_at_batch: Option<usize>,
    batches: usize,
    /// randomise's variance smoothing of t contrasts ([`crate::Engine::set_smoothing`]).
    pub(crate) smoothing: Option<Arc<VarianceSmoothing>>,
}

/// Timestamp queries around glm_stat passes, resolved and read back with each batch.
struct KernelTiming {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    /// Queries written in the current batch (two per pass).
    used: std::sync::atomic::AtomicU32,
    /// Kernel seconds summed over all batches so far.
    seconds: Mutex<f64>,
}

/// Passes timed per batch at most (two queries each); later passes of a batch go untimed.
const TIMED_PASSES: u32 = 2048;

impl GpuEngine {
    /// Open the adapter `choice` selects with `opts` (kernel, runtime checks, timestamps,
    /// tuning, fault injection) and compile the pipeline.
    pub fn new(choice: &AdapterChoice, opts: &GpuOptions) -> Result<GpuEngine> {
        let adapter = select_adapter(choice, unsuitable)?;
        let want_timing = opts.timestamps && adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let features = if want_timing { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let device = Device::open(&adapter, features, "voxflip")?;
        let info = device.info().clone();
        let limits = device.limits().clone();
        let glm_kernel = match opts.kernel {
            Some(k) => {
                if let Some(why) = kernel_unsupported(&limits, k) {
                    return Err(EngineError::Unsupported(format!("--glm-kernel {} on {}: {why}", k.name(), info.name)));
                }
                k
            }
            None => default_kernel(&info, &limits),
        };
        let timing = want_timing.then(|| KernelTiming {
            set: device.wgpu().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("glm_stat timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * TIMED_PASSES,
            }),
            resolve: device.wgpu().create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16 * TIMED_PASSES as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period: device.queue().get_timestamp_period() as f64,
            used: Default::default(),
            seconds: Mutex::new(0.0),
        });
        let mut engine = GpuEngine {
            device,
            // Sign flips need no row sources; the variant with them is built on first use.
            kernels: [None, None],
            voxelwise_kernels: [None, None],
            glm_kernel,
            product: Product::default(),
            table_kernel: None,
            unchecked: opts.unchecked,
            broken: None,
            state: None,
            tuning: opts.tuning,
            timing,
            fail_at_batch: opts.fail_at_batch,
            smoothing: None,
            batches: 0,
        };
        engine.ensure_kernel(false)?;
        Ok(engine)
    }

    /// Bound on multiply-adds per dispatch and per submission: small enough on every device
    /// that no submission trips a display driver's watchdog (see MAX_MACS_PER_DISPATCH).
    fn max_macs_per_dispatch(&self) -> u64 {
        self.tuning.max_macs_per_dispatch.unwrap_or(
            if self.device.info().device_type == wgpu::DeviceType::DiscreteGpu {
                MAX_MACS_PER_DISPATCH_DISCRETE
            } else {
                MAX_MACS_PER_DISPATCH
            },
        )
    }

    /// This engine's device, for other GPU stages that must read its buffers (the spatial
    /// reducer reads the maps of [`GpuEngine::run_batch_on_device`] there).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The glm_stat kernel in use.
    pub fn kernel(&self) -> GlmKernel {
        self.glm_kernel
    }

    /// Choose the glm_stat kernel (tests run all; results agree within rounding). An error if
    /// the adapter's limits do not allow it (the engine stays usable with its kernel). Call
    /// `prepare` afterwards: the E chunks are planned for the kernel's tiles, so the prepared
    /// problem is dropped.
    pub fn set_kernel(&mut self, kernel: GlmKernel) -> Result<()> {
        if let Some(why) = kernel_unsupported(self.device.limits(), kernel) {
            return Err(EngineError::Unsupported(format!("{} cannot run {why}", self.device.info().name)));
        }
        self.glm_kernel = kernel;
        self.kernels = [None, None];
        self.state = None;
        self.ensure_kernel(false)
    }

    /// Compile the Wide kernels without wgpu's runtime checks (index clamps on every array
    /// access, a counter bounding every loop; wgpu's `ShaderRuntimeChecks::unchecked`): in
    /// the inner loop that is three clamps per 32 FMAs. Off by default
    /// ([`GpuOptions::unchecked`]). The shader's own clamps keep its accesses in bounds (see the
    /// SAFETY note in `build_pipeline`), so results are the same; for timing it on hardware.
    pub fn set_unchecked(&mut self, on: bool) -> Result<()> {
        self.unchecked = on;
        self.kernels = [None, None];
        self.ensure_kernel(false)
    }

    /// Build the glm_stat variant for `has_src` if it is not there yet.
    fn ensure_kernel(&mut self, has_src: bool) -> Result<()> {
        if self.kernels[has_src as usize].is_none() {
            self.kernels[has_src as usize] =
                Some(build_pipeline(self.device.wgpu(), self.glm_kernel, has_src, self.unchecked));
            self.device.poll("compiling glm_stat").map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Build the glm_stat_voxelwise variant for `has_src` if it is not there yet.
    fn ensure_voxelwise_kernel(&mut self, has_src: bool) -> Result<()> {
        if let Some(why) = voxelwise_unsupported(self.device.limits()) {
            return Err(EngineError::Unsupported(format!("{}: {why}", self.device.info().name)));
        }
        if self.voxelwise_kernels[has_src as usize].is_none() {
            self.voxelwise_kernels[has_src as usize] = Some(build_voxelwise_pipeline(self.device.wgpu(), has_src));
            self.device.poll("compiling glm_stat_voxelwise").map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Which product forms the coefficients of the batches that follow: with `Table`, and
    /// with `Auto` on a hardware adapter, a sign-flip set (no row exchanges) runs
    /// `glm_stat_table.wgsl`, every other set the glm_stat kernel. `Auto` keeps the matrix
    /// product on software adapters, where the table path measured no faster than the
    /// `Direct` kernel (lavapipe keeps workgroup memory slow). Results agree within float
    /// rounding (tests/it/gpu_table_twins.rs).
    pub fn set_product(&mut self, product: Product) {
        self.product = product;
    }

    /// The product [`GpuEngine::set_product`] chose.
    pub fn product(&self) -> Product {
        self.product
    }

    /// The block size of the table-driven product for the batches of `perms` on the
    /// prepared problem, or None when they run the matrix product.
    pub fn table_bits(&self, perms: &PermSet) -> Option<u32> {
        let st = self.state.as_ref()?;
        let wanted = match self.product {
            Product::Gemm => false,
            Product::Table => true,
            Product::Auto => !self.is_software(),
        };
        // The table's sums share one basis across voxels.
        let table = wanted
            && !st.voxelwise
            && perms.kind == PermKind::SignFlip
            && perms.all_src().is_empty()
            && perms.words_per_perm > 0
            && table_unsupported(self.device.limits()).is_none();
        table.then(|| glm_stat_table::best_bits(st.n as u32))
    }

    /// Build the glm_stat_table pipeline for `bits` if it is not there yet.
    fn ensure_table_kernel(&mut self, bits: u32) -> Result<()> {
        if let Some(why) = table_unsupported(self.device.limits()) {
            return Err(EngineError::Unsupported(format!("{}: {why}", self.device.info().name)));
        }
        if self.table_kernel.as_ref().is_none_or(|(b, _)| *b != bits) {
            self.table_kernel = Some((bits, build_table_pipeline(self.device.wgpu(), bits)));
            self.device.poll("compiling glm_stat_table").map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// (voxel tiles, permutation tiles) of a dispatch of `params`.
    fn workgroups_of(&self, params: &GlmParams) -> (u32, u32) {
        if params.flags & FLAG_TABLE != 0 {
            glm_stat_table::workgroups(params)
        } else if params.flags & FLAG_VOXELWISE != 0 {
            glm_stat_voxelwise::workgroups(params)
        } else {
            glm_stat::workgroups(params, self.glm_kernel)
        }
    }

    fn pipeline(&self, params: &GlmParams) -> &Kernel {
        if params.flags & FLAG_TABLE != 0 {
            return &self.table_kernel.as_ref().expect("ensure_table_kernel first").1;
        }
        if params.flags & FLAG_VOXELWISE != 0 {
            let built = &self.voxelwise_kernels[(params.flags & FLAG_SRC != 0) as usize];
            return built.as_ref().expect("ensure_voxelwise_kernel first");
        }
        self.kernels[(params.flags & FLAG_SRC != 0) as usize].as_ref().expect("ensure_kernel first")
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        self.device.info()
    }

    /// Whether the adapter is a software implementation.
    pub fn is_software(&self) -> bool {
        self.device.is_software()
    }

    /// Voxels per E chunk of the prepared problem (0 before `prepare`).
    pub fn chunk_voxels(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.chunk_v)
    }

    /// Number of E chunks of the prepared problem.
    pub fn chunks(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.chunks.len())
    }

    /// Remember a device failure: the engine refuses further work (a caller's mistake,
    /// `Invalid`, leaves it usable).
    fn fail(&mut self, e: EngineError) -> EngineError {
        if e.falls_back() && self.broken.is_none() {
            self.broken = Some(e.clone());
        }
        e
    }

    /// The error of a broken engine, if it is.
    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(b) => Err(b.clone()),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bind_group(
        &self,
        params: &GlmParams,
        perm: &wgpu::Buffer,
        qbuf: &wgpu::Buffer,
        e: &wgpu::Buffer,
        vox: &wgpu::Buffer,
        max: &wgpu::Buffer,
        counts: &wgpu::Buffer,
        maps: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        // One small uniform buffer per dispatch: simpler than dynamic offsets, and the
        // dispatches are large enough that its cost does not show.
        let pbuf = self.device.uniform_init("glm_stat params", bytemuck::bytes_of(params));
        let bufs = [&pbuf, perm, qbuf, e, vox, max, counts, maps];
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.device.wgpu().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("glm_stat"),
            layout: &self.pipeline(params).1,
            entries: &entries,
        })
    }

    fn encode_dispatch(&self, enc: &mut wgpu::CommandEncoder, bg: &wgpu::BindGroup, params: &GlmParams) {
        let (wx, wy) = self.workgroups_of(params);
        if wx == 0 || wy == 0 {
            return;
        }
        let mut stamps = None;
        if let Some(t) = &self.timing {
            let at = t.used.load(std::sync::atomic::Ordering::Relaxed);
            if at + 2 <= 2 * TIMED_PASSES {
                t.used.store(at + 2, std::sync::atomic::Ordering::Relaxed);
                stamps = Some(wgpu::ComputePassTimestampWrites {
                    query_set: &t.set,
                    beginning_of_pass_write_index: Some(at),
                    end_of_pass_write_index: Some(at + 1),
                });
            }
        }
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("glm_stat"), timestamp_writes: stamps });
        pass.set_pipeline(&self.pipeline(params).0);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(wx, wy, 1);
    }

    /// Run glm_stat_table once on the device with blocks of `bits` rows and exactly its
    /// twin's buffers ([`voxflip_shaders::cpu::glm_stat_table::glm_stat_table`]), as
    /// [`GpuEngine::run_glm_stat`] runs glm_stat: the test hook for the table shader. `params`
    /// must describe sign flips (`wpp > 0`, no `FLAG_SRC`).
    #[allow(clippy::too_many_arguments)]
    pub fn run_glm_stat_table(
        &mut self,
        params: &GlmParams,
        bits: u32,
        perm_words: &[u32],
        qbasis: &[f32],
        e: &[f32],
        vox: &[f32],
        max_bits: &mut [u32],
        counts: &mut [u32],
        maps: &mut [f32],
    ) -> Result<()> {
        if params.flags & FLAG_SRC != 0 || params.wpp == 0 || !(1..=glm_stat_table::MAX_BITS).contains(&bits) {
            return Err(EngineError::Invalid("run_glm_stat_table: sign flips and 1 <= bits <= MAX_BITS only".into()));
        }
        self.ensure_table_kernel(bits)?;
        let params = GlmParams { flags: params.flags | FLAG_TABLE, ..*params };
        self.run_glm_stat(&params, perm_words, qbasis, e, vox, max_bits, counts, maps)
    }

    /// Run glm_stat_voxelwise once on the device with exactly its twin's buffers
    /// ([`voxflip_shaders::cpu::glm_stat_voxelwise::glm_stat_voxelwise`]; `bases` is the chunk's
    /// per-voxel bases, (n x q) x vc), as [`GpuEngine::run_glm_stat`] runs glm_stat: the test
    /// hook for the voxelwise shader.
    #[allow(clippy::too_many_arguments)]
    pub fn run_glm_stat_voxelwise(
        &mut self,
        params: &GlmParams,
        perm_words: &[u32],
        bases: &[f32],
        e: &[f32],
        vox: &[f32],
        max_bits: &mut [u32],
        counts: &mut [u32],
        maps: &mut [f32],
    ) -> Result<()> {
        self.ensure_voxelwise_kernel(params.flags & FLAG_SRC != 0)?;
        let params = GlmParams { flags: params.flags | FLAG_VOXELWISE, ..*params };
        self.run_glm_stat(&params, perm_words, bases, e, vox, max_bits, counts, maps)
    }

    /// Run glm_stat once on the device with exactly the twin's buffers
    /// ([`voxflip_shaders::cpu::glm_stat::glm_stat`]): the test hook that holds the shader against its twin.
    /// `max_bits` and `counts` are read as initial values and overwritten with the results;
    /// `maps` is written when `FLAG_MAPS` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn run_glm_stat(
        &mut self,
        params: &GlmParams,
        perm_words: &[u32],
        qbasis: &[f32],
        e: &[f32],
        vox: &[f32],
        max_bits: &mut [u32],
        counts: &mut [u32],
        maps: &mut [f32],
    ) -> Result<()> {
        if params.flags & (FLAG_TABLE | FLAG_VOXELWISE) == 0 {
            self.ensure_kernel(params.flags & FLAG_SRC != 0)?;
        }
        // The buffers must hold what the parameters address (the kernels clamp indices into
        // these extents; see set_unchecked).
        let p = params;
        let perms_end = (p.perm_offset + p.n_perm) as usize;
        let (n, q, vc) = (p.n as usize, p.q as usize, p.vc as usize);
        let mut words_needed = perms_end * p.wpp as usize;
        if p.flags & FLAG_SRC != 0 {
            words_needed = words_needed.max(p.src_base as usize + perms_end * n);
        }
        let maps_needed =
            if p.flags & FLAG_MAPS != 0 { perms_end.saturating_sub(p.maps_base as usize) * vc } else { 0 };
        let basis_needed = if p.flags & FLAG_VOXELWISE != 0 { glm_stat_voxelwise::bases_len(n, q, vc) } else { n * q };
        if perm_words.len() < words_needed
            || qbasis.len() < basis_needed
            || e.len() < n * vc
            || vox.len() < 2 * vc
            || max_bits.len() < perms_end
            || counts.len() < vc
            || maps.len() < maps_needed
            || (p.flags & FLAG_MAPS != 0 && p.maps_base > p.perm_offset)
        {
            return Err(EngineError::Invalid("run_glm_stat: buffers smaller than the parameters address".into()));
        }
        let (wx, wy) = self.workgroups_of(params);
        let maxd = self.device.limits().max_compute_workgroups_per_dimension;
        if wx > maxd || wy > maxd {
            return Err(EngineError::Invalid(format!("dispatch {wx}x{wy} exceeds {maxd} workgroups per dimension")));
        }
        let src = wgpu::BufferUsages::COPY_SRC;
        let none = wgpu::BufferUsages::empty();
        let perm = self.device.storage_init("perm words", bytemuck::cast_slice(perm_words), none);
        let qbuf = self.device.storage_init("Q", bytemuck::cast_slice(qbasis), none);
        let ebuf = self.device.storage_init("E", bytemuck::cast_slice(e), none);
        let vbuf = self.device.storage_init("vox", bytemuck::cast_slice(vox), none);
        let mbuf = self.device.storage_init("max", bytemuck::cast_slice(max_bits), src);
        let cbuf = self.device.storage_init("counts", bytemuck::cast_slice(counts), src);
        let pbuf = self.device.storage_init("maps", bytemuck::cast_slice(maps), src);
        let bg = self.bind_group(params, &perm, &qbuf, &ebuf, &vbuf, &mbuf, &cbuf, &pbuf);
        let mut enc = self.device.encoder();
        self.encode_dispatch(&mut enc, &bg, params);
        self.device.submit_checked(enc, "glm_stat")?;
        let m = self.device.read_back(&mbuf, 0, (max_bits.len() * 4) as u64, "glm_stat max")?;
        max_bits.copy_from_slice(bytemuck::cast_slice(&m));
        let c = self.device.read_back(&cbuf, 0, (counts.len() * 4) as u64, "glm_stat counts")?;
        counts.copy_from_slice(bytemuck::cast_slice(&c));
        if params.flags & FLAG_MAPS != 0 {
            let p = self.device.read_back(&pbuf, 0, (maps.len() * 4) as u64, "glm_stat maps")?;
            maps.copy_from_slice(bytemuck::cast_slice(&p));
        }
        Ok(())
    }

    fn prepare_inner(&mut self, pb: &ContrastProblem) -> Result<()> {
        self.state = None;
        let (n, v, q) = (pb.n, pb.v, pb.q);
        if n == 0 || q == 0 || pb.s == 0 || pb.s > q {
            return Err(EngineError::Invalid(format!("invalid problem: n={n}, q={q}, s={}", pb.s)));
        }
        if pb.e.len() != n * v || pb.qbasis.len() != n * q || pb.ss.len() != v {
            return Err(EngineError::Invalid("problem buffers do not match n, v, q".into()));
        }
        let voxel_bases = pb.voxel_qbasis.as_deref();
        if voxel_bases.is_some_and(|b| b.len() != v * n * q) {
            return Err(EngineError::Invalid("voxelwise bases do not match n, v, q".into()));
        }
        if voxel_bases.is_some() {
            self.ensure_voxelwise_kernel(false)?;
        }
        let binding = self.device.binding_limit();
        // At least the Tiles kernel's 32 (as before for Direct, whose tiles hold 4).
        let tp = self.glm_kernel.tile_perms().max(glm_stat::TP);
        // With voxelwise regressors the chunk's bases (n q floats a voxel) are its largest buffer.
        let floats_per_voxel = if voxel_bases.is_some() { n * q } else { n };
        let mut chunk_v =
            plan_chunk_voxels(self.device.limits(), n, q, floats_per_voxel, self.max_macs_per_dispatch(), tp);
        if let Some(c) = self.tuning.chunk_voxels {
            chunk_v = chunk_v.min(c.max(1));
        }
        if chunk_v == 0 {
            return Err(EngineError::Unsupported(format!(
                "N = {n} rows do not fit one storage binding of {binding} bytes"
            )));
        }
        chunk_v = chunk_v.min(v.max(1));
        if (n * q) as u64 * 4 > binding {
            return Err(EngineError::Unsupported("Q does not fit one storage binding".into()));
        }
        let qbuf = self.device.storage_init("Q", bytemuck::cast_slice(&pb.qbasis), wgpu::BufferUsages::empty());
        let mut chunks = Vec::new();
        let mut v0 = 0;
        while v0 < v {
            let vc = chunk_v.min(v - v0);
            let mut e = Vec::with_capacity(n * vc);
            for m in 0..n {
                e.extend_from_slice(&pb.e[m * v + v0..m * v + v0 + vc]);
            }
            let mut vox = vec![0.0f32; 2 * vc];
            vox[..vc].copy_from_slice(&pb.ss[v0..v0 + vc]);
            let copy = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
            let bases = voxel_bases.map(|all| {
                let chunk = glm_stat_voxelwise::chunk_bases(all, n, q, v0, vc);
                self.device.storage_init("bases chunk", bytemuck::cast_slice(&chunk), wgpu::BufferUsages::empty())
            });
            chunks.push(Chunk {
                v0,
                vc,
                e: self.device.storage_init("E chunk", bytemuck::cast_slice(&e), wgpu::BufferUsages::empty()),
                vox: self.device.storage_init("vox", bytemuck::cast_slice(&vox), wgpu::BufferUsages::COPY_DST),
                counts: self.device.storage_empty("counts", 4 * vc as u64, copy),
                bases,
            });
            drop(e);
            // Upload chunk by chunk so that the staging copies do not pile up.
            self.device.poll("uploading E")?;
            v0 += vc;
        }
        let per_perm = (n * q * v.max(1)) as f64;
        let target = if self.is_software() { TARGET_MACS_PER_BATCH } else { TARGET_MACS_PER_BATCH_HARDWARE };
        let mut batch = (target / per_perm) as usize;
        batch = batch.clamp(tp as usize, 16384);
        batch -= batch % tp as usize;
        if let Some(b) = self.tuning.batch {
            batch = b.max(1);
        }
        let ss = pb.ss.clone();
        let voxelwise = voxel_bases.is_some();
        self.state = Some(Resident {
            n,
            v,
            q,
            s: pb.s,
            kind: pb.kind,
            dof: pb.dof,
            voxelwise,
            ss,
            qbuf,
            chunks,
            chunk_v,
            batch,
        });
        Ok(())
    }

    fn run_inner(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        self.run_inner_keep(perms, range, observed, maps, false).map(|(r, _)| r)
    }

    /// `run_inner`; with `keep`, the batch's maps (b x V, permutation-major) are written into
    /// a fresh device buffer that is returned instead of read back (one chunk only).
    fn run_inner_keep(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        mut maps: Option<&mut [f32]>,
        keep: bool,
    ) -> Result<(BatchResult, Option<wgpu::Buffer>)> {
        let table_bits = self.table_bits(perms);
        let voxelwise = self.state.as_ref().is_some_and(|st| st.voxelwise);
        let has_src = !perms.all_src().is_empty();
        match table_bits {
            Some(bits) => self.ensure_table_kernel(bits)?,
            None if voxelwise => self.ensure_voxelwise_kernel(has_src)?,
            None => self.ensure_kernel(has_src)?,
        }
        let st = self.state.as_ref().ok_or_else(|| EngineError::Invalid("run_batch before prepare".into()))?;
        let (n, v, q) = (st.n, st.v, st.q);
        let b = range.len();
        if perms.n != n {
            return Err(EngineError::Invalid(format!("permutation set has N = {}, problem N = {n}", perms.n)));
        }
        if range.end > perms.len() {
            return Err(EngineError::Invalid(format!("permutations {range:?} out of {}", perms.len())));
        }
        if let Some(o) = observed {
            if o.len() != v {
                return Err(EngineError::Invalid(format!("observed map has {} voxels, expected {v}", o.len())));
            }
        }
        if let Some(m) = maps.as_deref() {
            if m.len() != b * v {
                return Err(EngineError::Invalid(format!("maps buffer has {} values, expected {}", m.len(), b * v)));
            }
        }
        if b == 0 {
            let empty =
                BatchResult { max_stat: Vec::new(), exceed: if observed.is_some() { vec![0; v] } else { Vec::new() } };
            return Ok((empty, None));
        }
        if keep && (maps.is_some() || !self.can_keep_maps(b)) {
            return Err(EngineError::Invalid(format!("cannot keep {b} maps on the device")));
        }

        // Permutation words of the batch: [signs, b x wpp | sources, b x n].
        let wpp = perms.words_per_perm;
        let has_src = !perms.all_src().is_empty();
        let mut words: Vec<u32> = Vec::with_capacity(b * (wpp + if has_src { n } else { 0 }));
        for j in range.clone() {
            words.extend_from_slice(perms.flip_words(j));
        }
        let src_base = words.len() as u32;
        if has_src {
            for j in range.clone() {
                words.extend_from_slice(perms.src(j).unwrap());
            }
        }
        let binding = self.device.binding_limit();
        if words.len() as u64 * 4 > binding {
            return Err(EngineError::Unsupported(format!("batch of {b} permutations is too large for one binding")));
        }
        let perm_buf =
            self.device.storage_init("perm words", bytemuck::cast_slice(&words), wgpu::BufferUsages::empty());
        let max_buf =
            self.device.storage_init("max", bytemuck::cast_slice(&vec![0u32; b]), wgpu::BufferUsages::COPY_SRC);
        let mut flags = if has_src { FLAG_SRC } else { 0 };
        if table_bits.is_some() {
            flags |= FLAG_TABLE;
        }
        if voxelwise {
            flags |= FLAG_VOXELWISE;
        }
        if observed.is_some() {
            flags |= FLAG_OBSERVED;
        }
        if maps.is_some() || keep {
            flags |= FLAG_MAPS;
        }
        let mut enc = self.device.encoder();
        for c in &st.chunks {
            if let Some(o) = observed {
                self.device.queue().write_buffer(
                    &c.vox,
                    (4 * c.vc) as u64,
                    bytemuck::cast_slice(&o[c.v0..c.v0 + c.vc]),
                );
                enc.clear_buffer(&c.counts, 0, None);
            }
        }
        // Permutations whose maps fit one readback buffer for the widest chunk.
        let maps_cap = binding.min(self.tuning.max_maps_bytes.unwrap_or(MAPS_CAP_BYTES));
        let group = if maps.is_some() { ((maps_cap / (4 * st.chunk_v as u64)) as usize).clamp(1, b) } else { b };
        let maps_buf = if maps.is_some() || keep {
            Some(self.device.storage_empty("maps", (4 * group * st.chunk_v) as u64, wgpu::BufferUsages::COPY_SRC))
        } else {
            None
        };
        let dummy = self.device.storage_empty("no maps", 4, wgpu::BufferUsages::empty());
        let maxd = self.device.limits().max_compute_workgroups_per_dimension as usize;
        let kind = match st.kind {
            StatKind::T => KIND_T,
            StatKind::F => KIND_F,
        };

        let max_macs = self.max_macs_per_dispatch();
        let mut pending: u64 = 0;
        for g0 in (0..b).step_by(group) {
            let g1 = (g0 + group).min(b);
            for c in &st.chunks {
                let per_perm = (c.vc * n * q) as u64;
                let tile_perms = if table_bits.is_some() {
                    glm_stat_table::TP
                } else if voxelwise {
                    glm_stat_voxelwise::TP
                } else {
                    self.glm_kernel.tile_perms()
                } as usize;
                let round = tile_perms.max(glm_stat::TP as usize);
                let mut pd = ((max_macs / per_perm.max(1)) as usize).max(1);
                if pd >= round {
                    pd -= pd % round;
                }
                pd = pd.min(maxd * tile_perms);
                let mut pa = g0;
                while pa < g1 {
                    let pz = (pa + pd).min(g1);
                    let params = GlmParams {
                        n: n as u32,
                        q: q as u32,
                        s: st.s as u32,
                        kind,
                        vc: c.vc as u32,
                        n_perm: (pz - pa) as u32,
                        perm_offset: pa as u32,
                        wpp: wpp as u32,
                        src_base,
                        flags,
                        maps_base: g0 as u32,
                        dof: st.dof,
                        inv_s: GlmParams::inv_s_of(st.s as u32),
                        ..Default::default()
                    };
                    let bg = self.bind_group(
                        &params,
                        &perm_buf,
                        c.bases.as_ref().unwrap_or(&st.qbuf),
                        &c.e,
                        &c.vox,
                        &max_buf,
                        &c.counts,
                        maps_buf.as_ref().unwrap_or(&dummy),
                    );
                    self.encode_dispatch(&mut enc, &bg, &params);
                    pending += per_perm * (pz - pa) as u64;
                    if pending >= max_macs {
                        // Each submission stays within the work bound; no wait in between
                        // (the batch's final submit_checked / read_back polls and checks).
                        self.device.submit(std::mem::replace(&mut enc, self.device.encoder()));
                        pending = 0;
                    }
                    pa = pz;
                }
                if let (Some(mb), Some(out)) = (maps_buf.as_ref(), maps.as_deref_mut()) {
                    self.device.submit_checked(std::mem::replace(&mut enc, self.device.encoder()), "glm_stat")?;
                    pending = 0;
                    let bytes = self.device.read_back(mb, 0, (4 * (g1 - g0) * c.vc) as u64, "reading maps")?;
                    let vals: &[f32] = bytemuck::cast_slice(&bytes);
                    for (r, row) in vals.chunks_exact(c.vc).enumerate() {
                        let at = (g0 + r) * v + c.v0;
                        out[at..at + c.vc].copy_from_slice(row);
                    }
                }
            }
        }
        // The maxima and the counts of every chunk come back with the last dispatches: one
        // submission and one wait per batch.
        let mut parts = vec![(&max_buf, 4 * b as u64)];
        if observed.is_some() {
            parts.extend(st.chunks.iter().map(|c| (&c.counts, 4 * c.vc as u64)));
        }
        let stamped = self.timing.as_ref().map_or(0, |t| t.used.swap(0, std::sync::atomic::Ordering::Relaxed));
        if let (Some(t), true) = (&self.timing, stamped > 0) {
            enc.resolve_query_set(&t.set, 0..stamped, &t.resolve, 0);
            parts.push((&t.resolve, 8 * stamped as u64));
        }
        let bytes = self.device.submit_and_read(enc, &parts, "glm_stat results")?;
        if let (Some(t), true) = (&self.timing, stamped > 0) {
            let at = bytes.len() - 8 * stamped as usize;
            // Byte-wise: the part need not be 8-byte aligned within the readback.
            let ticks: Vec<u64> =
                bytes[at..].chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect();
            let ns: f64 = ticks.chunks_exact(2).map(|p| p[1].saturating_sub(p[0]) as f64).sum::<f64>() * t.period;
            *t.seconds.lock().unwrap() += ns * 1e-9;
        }
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let max_stat: Vec<f32> = words[..b].iter().map(|&k| value_of(k)).collect();
        let mut exceed = Vec::new();
        if observed.is_some() {
            exceed = vec![0u32; v];
            let mut at = b;
            for c in &st.chunks {
                exceed[c.v0..c.v0 + c.vc].copy_from_slice(&words[at..at + c.vc]);
                at += c.vc;
            }
        }
        Ok((BatchResult { max_stat, exceed }, if keep { maps_buf } else { None }))
    }

    /// Seconds the glm_stat passes took on the GPU so far, from timestamp queries (None unless
    /// [`GpuOptions::timestamps`] and the adapter supports them). Excludes host waits and
    /// transfers: the kernels' own throughput.
    pub fn kernel_seconds(&self) -> Option<f64> {
        self.timing.as_ref().map(|t| *t.seconds.lock().unwrap())
    }

    /// Whether a batch of `b` maps can stay on the device ([`GpuEngine::run_batch_on_device`]):
    /// the prepared problem is one chunk (all voxels) and b x V floats fit one binding.
    pub fn can_keep_maps(&self, b: usize) -> bool {
        // Smoothed maps are formed on the host from two maps per permutation.
        if self.smoothed().is_some() {
            return false;
        }
        let binding = self.device.binding_limit();
        self.state.as_ref().is_some_and(|st| st.chunks.len() == 1 && (4 * b * st.v) as u64 <= binding)
    }

    /// [`GpuEngine::run_batch`] with the batch's statistic maps left on the device: returns
    /// the reductions and a buffer of range.len() x V floats (permutation-major) that spatial
    /// statistics on this device ([`GpuEngine::device`]) read directly, so the maps never
    /// cross the bus. The buffer lives as long as the caller holds it.
    pub fn run_batch_on_device(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
    ) -> Result<(BatchResult, wgpu::Buffer)> {
        self.check_usable()?;
        if !self.can_keep_maps(range.len()) {
            // A caller's mistake, not a device failure: the engine stays usable.
            return Err(EngineError::Invalid(format!("cannot keep {} maps on the device", range.len())));
        }
        self.injected_failure(None)?;
        let (r, buf) = self.run_inner_keep(perms, range, observed, None, true).map_err(|e| self.fail(e))?;
        Ok((r, buf.expect("kept maps buffer")))
    }

    /// What the engine is, for stderr and the sidecar.
    pub fn describe(&self) -> String {
        let info = self.device.info();
        let mut d = format!(
            "gpu: {} ({:?}, {:?}, driver {} {}), glm_stat {}{}",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info,
            match self.glm_kernel {
                GlmKernel::Direct => "direct loads",
                GlmKernel::Tiles => "workgroup tiles 4x4",
                GlmKernel::Wide => "wide workgroup tiles 8x4, 128x64",
                GlmKernel::Wide128 => "wide workgroup tiles 8x4, 64x64",
            },
            if self.unchecked && matches!(self.glm_kernel, GlmKernel::Wide | GlmKernel::Wide128) {
                " (unchecked)"
            } else {
                ""
            },
        );
        let table = match self.product {
            Product::Gemm => false,
            Product::Table => true,
            Product::Auto => !self.is_software(),
        };
        if table && table_unsupported(self.device.limits()).is_none() {
            d += ", table-driven product for sign flips";
        }
        if let Some(st) = &self.state {
            if st.voxelwise {
                d += ", glm_stat_voxelwise (a basis per voxel)";
            }
            d += &format!(", E chunk {} voxels, batch {}", self.chunk_voxels(), self.preferred_batch());
        }
        d
    }

    /// The smoothing and the prepared t problem's (q, dof, ss), when this engine smooths
    /// the variance of the prepared contrast (a t contrast with smoothing set).
    pub(crate) fn smoothed(&self) -> Option<(Arc<VarianceSmoothing>, usize, f32, &[f32])> {
        let st = self.state.as_ref().filter(|st| st.kind == StatKind::T)?;
        Some((self.smoothing.clone()?, st.q, st.dof, &st.ss[..]))
    }

    /// Which statistic the next batches compute from the prepared problem (the smoothed
    /// path's F with s = q, from which the residual variance follows).
    pub(crate) fn set_statistic(&mut self, kind: StatKind, s: usize) {
        if let Some(st) = self.state.as_mut() {
            st.kind = kind;
            st.s = s;
        }
    }

    /// Make `problem` resident (upload E, Q, ss, and with voxelwise regressors every voxel's
    /// basis, chunk by chunk). Called once per contrast.
    pub fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        self.check_usable()?;
        self.prepare_inner(problem).map_err(|e| self.fail(e))
    }

    /// The batch this engine prefers (permutations per call).
    pub fn preferred_batch(&self) -> usize {
        self.state.as_ref().map_or(1024, |s| s.batch)
    }

    /// Run permutations `range` of `perms`: the maximum statistic of each, with `observed`
    /// the per-voxel exceedance counts, with `maps` (range.len() x V) every map.
    pub fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        mut maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        self.check_usable()?;
        self.injected_failure(maps.as_deref_mut())?;
        self.run_inner(perms, range, observed, maps).map_err(|e| self.fail(e))
    }

    /// [`GpuOptions::fail_at_batch`]: at that batch the device "is lost" (after scribbling
    /// on the caller's maps, as a half-finished batch might) and stays lost.
    fn injected_failure(&mut self, maps: Option<&mut [f32]>) -> Result<()> {
        self.batches += 1;
        if self.fail_at_batch.is_some_and(|k| self.batches >= k) {
            if let Some(m) = maps {
                m.fill(f32::NAN);
            }
            return Err(self.fail(EngineError::DeviceLost("device lost (simulated)".into())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxflip_shaders::glm_stat;

    fn limits(binding: u64) -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffer_binding_size: binding as _,
            max_buffer_size: binding,
            max_compute_workgroups_per_dimension: 65535,
            ..wgpu::Limits::default()
        }
    }

    #[test]
    fn a_2mm_brain_with_500_images_is_chunked_to_fit() {
        let (n, q, v) = (500usize, 2usize, 228_000usize);
        // lavapipe: 128 MiB per binding.
        let c = plan_chunk_voxels(&limits(128 << 20), n, q, n, MAX_MACS_PER_DISPATCH, glm_stat::TP);
        assert!(c > 0 && (4 * n * c) as u64 <= 128 << 20 && c.is_multiple_of(TV as usize));
        assert!(v.div_ceil(c) >= 4, "several chunks on lavapipe: {c}");
        // A 4 GiB card (2 GiB bindings): chunks within the 1 GiB cap and the dispatch bound.
        let c = plan_chunk_voxels(&limits(2 << 30), n, q, n, MAX_MACS_PER_DISPATCH, glm_stat::TP);
        assert!((4 * n * c) as u64 <= E_CHUNK_CAP_BYTES);
        assert!((n * q * c * glm_stat::TP as usize) as u64 <= MAX_MACS_PER_DISPATCH);
        // N = 58: one chunk of the whole brain fits both.
        assert!(plan_chunk_voxels(&limits(128 << 20), 58, 2, 58, MAX_MACS_PER_DISPATCH, glm_stat::TP) >= v);
        // The Wide kernel's 128-permutation tiles on a discrete GPU: still one chunk.
        let tp = glm_stat::wide::TP;
        assert!(plan_chunk_voxels(&limits(2 << 30), 58, 2, 58, MAX_MACS_PER_DISPATCH_DISCRETE, tp) >= v);
    }

    #[test]
    fn voxelwise_bases_of_the_driving_study_are_chunked_on_lavapipe() {
        // 228,000 voxels x 58 rows x 3 columns of f32: 159 MB of bases, over lavapipe's 128 MiB.
        let (n, q, v) = (58usize, 3usize, 228_000usize);
        let c = plan_chunk_voxels(&limits(128 << 20), n, q, n * q, MAX_MACS_PER_DISPATCH, glm_stat::TP);
        assert!(c > 0 && (4 * n * q * c) as u64 <= 128 << 20, "{c}");
        assert_eq!(v.div_ceil(c), 2, "two chunks of bases: {c}");
        // Bindings of 2 GiB: one chunk (159 MB, inside the 1 GiB cap).
        let c = plan_chunk_voxels(&limits(2 << 30), n, q, n * q, MAX_MACS_PER_DISPATCH_DISCRETE, glm_stat::TP);
        assert!(c >= v, "{c}");
    }
}
