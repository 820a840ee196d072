//! The GPU engine: wgpu compute shaders for the permutation GLM (DESIGN.md, "The GLM and
//! Freedman–Lane, in the form the kernels use").
//!
//! `prepare` uploads Q, E and ||E||^2 once; E is cut into voxel chunks small enough for one
//! storage binding (lavapipe allows 128 MiB, many GPUs 2-4 GiB), and every batch runs
//! glm_stat over (permutation sub-batch x chunk) dispatches. Each dispatch is bounded in work
//! so that no single submission can trip a display driver's watchdog; the submissions of a
//! batch are queued back to back and the device is polled (and its errors collected) once per
//! batch, with the results' readback. Any wgpu error (validation, out of memory, device lost,
//! failed mapping) is returned as `Error::Gpu` and the engine refuses further work, so a
//! caller sees an error, never a silently wrong map, and can continue on the CPU from the
//! batch that failed.
//!
//! glm_stat comes in four kernels ([`GlmKernel`]), chosen per adapter: `Wide128`
//! (`shaders/glm_stat_wide.wgsl`, 8 x 4 register blocks over 64 x 64 workgroup tiles) on
//! hardware, else `Wide` (the same, 128 x 64 tiles), else `Tiles` (`glm_stat.wgsl`, 4 x 4
//! blocks, 32 x 64 tiles) where the adapter's workgroup limits are too small for them;
//! `Direct` (`glm_stat.wgsl` reading storage directly) on software adapters, where lavapipe
//! makes workgroup memory slow. The environment variable
//! VOXFLIP_GLM_KERNEL=direct|tiles|wide|wide128 (also old = tiles, new = wide128) or
//! [`GpuEngine::set_kernel`] overrides the choice. All give the same sums in the same
//! order; the CPU twin in `cpu/` is the oracle for each (tests/gpu_twins.rs).
use crate::engine::{BatchResult, ContrastProblem, Engine, StatKind};
use crate::error::{Error, Result};
use crate::perm::PermSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

pub mod cpu;
pub mod glm_stat;
pub mod spatial;

pub use glm_stat::GlmKernel;
use glm_stat::{GlmParams, FLAG_MAPS, FLAG_OBSERVED, FLAG_SRC, TV};

/// Which adapter to use.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Case-insensitive substring of the adapter name; None = the best one.
    pub name: Option<String>,
    /// Accept software adapters (lavapipe, llvmpipe, WARP): correct but slow, useful for
    /// tests and CI, never picked silently.
    pub allow_software: bool,
}

/// One adapter as `voxflip devices` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// A CPU implementation (DeviceType::Cpu).
    pub software: bool,
    /// Whether the adapter can run compute shaders at all (not every GL driver can).
    pub compute: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

/// Largest E chunk we allocate even where the limits allow more: leaves room on a 4 GiB card
/// for the staging copy wgpu makes on upload and for the maps buffer.
const E_CHUNK_CAP_BYTES: u64 = 1 << 30;
/// Largest maps buffer (permutations x chunk voxels) per readback.
const MAPS_CAP_BYTES: u64 = 256 << 20;
/// Multiply-adds per dispatch: 2^31 is ~4 GFLOP, a few ms on a discrete GPU, ~40 ms on a
/// weak integrated one, well under the ~2 s watchdogs of Windows (TDR) and desktop Linux.
const MAX_MACS_PER_DISPATCH: u64 = 1 << 31;
/// The same bound on discrete GPUs: 2^33 is ~17 GFLOP, ~1 ms on an H100, ~10 ms on a weak
/// 2 TFLOP/s card. Four times fewer dispatches (and one E chunk where 2^31 would cut a brain
/// in two for the 128-permutation tiles of the `Wide` kernel).
const MAX_MACS_PER_DISPATCH_DISCRETE: u64 = 1 << 33;
/// Multiply-adds a batch should hold so that per-batch costs (upload of permutation words,
/// readback of maxima and counts, synchronisation) stay small against the product.
const TARGET_MACS_PER_BATCH: f64 = (1u64 << 34) as f64;
/// The same on hardware adapters, where the product is fast enough that 2^34 (640
/// permutations of N = 58, q = 2, V = 228k, ~1.7 ms on an H100 at 30% of peak) would make
/// the per-batch uploads, readback and host round trip a large share: 2^37 gives 5120.
const TARGET_MACS_PER_BATCH_HARDWARE: f64 = (1u64 << 37) as f64;

fn instance() -> wgpu::Instance {
    // _from_env: WGPU_BACKEND and friends still let a user steer wgpu.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn summarize(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let l = a.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        software: info.device_type == wgpu::DeviceType::Cpu,
        compute: a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
    }
}

/// Every adapter wgpu can see, usable or not.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all())).iter().map(summarize).collect()
}

/// A human-readable listing for `voxflip devices`.
pub fn describe_adapters() -> String {
    let list = list_adapters();
    if list.is_empty() {
        return "no GPU adapters found (voxflip will use --backend cpu)\n".to_string();
    }
    let mut out = String::new();
    for (i, a) in list.iter().enumerate() {
        out += &format!(
            "[{i}] {} ({} {}, {}){}{}\n    driver: {}\n    max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
             workgroup storage {} KiB, invocations/workgroup {}, workgroups/dimension {}\n",
            a.name,
            a.backend,
            a.device_type,
            if a.software { "software" } else { "hardware" },
            if a.software { " [used only with --backend gpu]" } else { "" },
            if a.compute { "" } else { " [no compute shaders: unusable]" },
            if a.driver.is_empty() { "?" } else { &a.driver },
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroup_storage_size / 1024,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension,
        );
    }
    out
}

/// Whether a hardware (non-software) adapter with compute shaders exists.
pub fn hardware_adapter_available() -> bool {
    list_adapters().iter().any(|a| !a.software && a.compute)
}

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
    let bytes = kernel.workgroup_storage_bytes();
    if l.max_compute_workgroup_storage_size < bytes {
        return Some(format!(
            "glm_stat {}: workgroup storage {} B < {bytes} B needed",
            kernel.name(),
            l.max_compute_workgroup_storage_size
        ));
    }
    let (x, y) = kernel.workgroup_size();
    if l.max_compute_invocations_per_workgroup < x * y
        || l.max_compute_workgroup_size_x < x
        || l.max_compute_workgroup_size_y < y
    {
        return Some(format!("glm_stat {}: workgroups of {x}x{y} not supported", kernel.name()));
    }
    None
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

/// Shared-tiles kernels in order of preference. Timed on an NVIDIA H100 (Vulkan, driver
/// 580; N = 58, q = 2, V = 228,000, 20,000 sign flips, tests/gpu_twins.rs): Wide (128 x 64
/// tiles) 74 ms = 14.2 TFLOP/s, Wide128 (64 x 64) 79 ms = 13.4, Tiles (4 x 4 block) 192 ms
/// = 5.5, with identical maxima and counts. Wide128 remains for adapters whose workgroup
/// limits refuse Wide's 256 invocations or 25 KiB of workgroup memory.
const TILED_PREFERENCE: [GlmKernel; 3] = [GlmKernel::Wide, GlmKernel::Wide128, GlmKernel::Tiles];

fn preferred_tiled(l: &wgpu::Limits) -> GlmKernel {
    TILED_PREFERENCE.into_iter().find(|&k| kernel_unsupported(l, k).is_none()).unwrap_or(GlmKernel::Tiles)
}

/// Map `staging` (MAP_READ, its copies already submitted) and return its bytes: `poll`
/// waits for the device and reports its errors.
pub(crate) fn read_staging(staging: &wgpu::Buffer, what: &str, poll: impl FnOnce() -> Result<()>) -> Result<Vec<u8>> {
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    poll()?;
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Gpu(format!("{what}: mapping the result failed: {e}"))),
        Err(_) => return Err(Error::Gpu(format!("{what}: mapping the result never completed"))),
    }
    let data = slice
        .get_mapped_range()
        .map_err(|e| Error::Gpu(format!("{what}: mapping the result failed: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(data)
}

/// The adapter `choice` selects: among those whose name contains `choice.name` (any, if
/// None), hardware first (software only if allowed), the best by [`rank`] that `unsuitable`
/// does not reject. The error lists what was skipped and why.
pub(crate) fn select_adapter(
    choice: &AdapterChoice,
    unsuitable: impl Fn(&wgpu::Adapter) -> Option<String>,
) -> Result<wgpu::Adapter> {
    let inst = instance();
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    let mut rejected = Vec::new();
    let mut candidates: Vec<wgpu::Adapter> = Vec::new();
    for a in adapters {
        let info = a.get_info();
        if let Some(want) = &choice.name {
            if !info.name.to_lowercase().contains(&want.to_lowercase()) {
                continue;
            }
        }
        if info.device_type == wgpu::DeviceType::Cpu && !choice.allow_software {
            rejected.push(format!("{} (software adapter: used only with --backend gpu)", info.name));
            continue;
        }
        if let Some(why) = unsuitable(&a) {
            rejected.push(format!("{} ({why})", info.name));
            continue;
        }
        candidates.push(a);
    }
    candidates.sort_by_key(|a| rank(&a.get_info()));
    candidates.into_iter().next().ok_or_else(|| {
        let wanted = choice.name.as_ref().map(|n| format!(" matching '{n}'")).unwrap_or_default();
        let skipped = if rejected.is_empty() { String::new() } else { format!(" (skipped: {})", rejected.join(", ")) };
        Error::Gpu(format!("no GPU adapter found{wanted}{skipped}; use --backend cpu"))
    })
}

fn rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let t = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let b = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
    (t, b)
}

/// Voxels per chunk of E for `n` rows and `q` columns of Q under `limits`: the chunk (n x
/// chunk floats) and its [ss | observed] pair must each fit one storage binding (and at most
/// 1 GiB, leaving room for wgpu's upload staging on a 4 GiB card), the grid must stay within
/// the workgroups-per-dimension limit, and one row of permutation tiles (`tile_perms` each)
/// over the chunk must fit the per-dispatch work bound. A multiple of the voxel tile where
/// possible; 0 if not even one voxel fits.
pub fn plan_chunk_voxels(
    limits: &wgpu::Limits,
    n: usize,
    q: usize,
    max_macs_per_dispatch: u64,
    tile_perms: u32,
) -> usize {
    let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    let cap = binding.min(E_CHUNK_CAP_BYTES);
    // n.max(2): the [ss | observed] buffer (2 chunk floats) must fit the binding too.
    let mut chunk_v = (cap / (4 * n.max(2) as u64)) as usize;
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
        // row loop): on an H100 the passes alone took 57.5 ms for 20,000 flips without it
        // against 67.6 ms with it (18.4 against 15.6 TFLOP/s), bounds checks still on.
        // With `unchecked` the bounds checks go too (54.7 ms, 19.3 TFLOP/s).
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
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut constants = vec![("HAS_SRC", flag(has_src))];
    if matches!(kernel, GlmKernel::Direct | GlmKernel::Tiles) {
        constants.push(("SHARED_TILES", flag(kernel == GlmKernel::Tiles)));
    }
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("glm_stat"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            // The shader initialises the workgroup memory it reads.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    (pipeline, layout)
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
}

struct Resident {
    n: usize,
    v: usize,
    q: usize,
    s: usize,
    kind: StatKind,
    dof: f32,
    qbuf: wgpu::Buffer,
    chunks: Vec<Chunk>,
    chunk_v: usize,
    batch: usize,
}

/// The GPU engine (see the module docs).
pub struct GpuEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// glm_stat variants by `has_src` (without / with row sources), built on first use.
    kernels: [Option<Kernel>; 2],
    /// Which glm_stat kernel runs.
    glm_kernel: GlmKernel,
    /// Wide kernels compiled without wgpu's runtime checks (see `set_unchecked`).
    unchecked: bool,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Errors reported by wgpu (uncaptured errors, device loss), drained after every poll.
    errors: Arc<Mutex<Vec<String>>>,
    /// Set once something failed: later calls fail fast rather than trust a broken device.
    broken: Option<String>,
    state: Option<Resident>,
    /// Voxels per chunk of E, overriding the size derived from the limits (tests force small
    /// chunks with this). Takes effect at the next `prepare`.
    pub chunk_override: Option<usize>,
    /// Bound on multiply-adds per dispatch and per submission (see MAX_MACS_PER_DISPATCH).
    /// Takes effect for chunking at the next `prepare`.
    pub max_macs_per_dispatch: u64,
    /// Largest maps buffer read back at once (bytes); a batch with maps is read back in
    /// groups of permutations that fit it. Tests shrink it to exercise the grouping.
    pub max_maps_bytes: u64,
    /// GPU timestamps around every glm_stat pass (VOXFLIP_GPU_TIMESTAMPS=1, where the adapter
    /// has TIMESTAMP_QUERY): the kernels' own time, for benchmarks.
    timing: Option<KernelTiming>,
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
    /// Open the adapter `choice` selects, create the device with the adapter's own limits
    /// (the defaults are smaller) and compile the pipeline.
    pub fn new(choice: &AdapterChoice) -> Result<GpuEngine> {
        let adapter = select_adapter(choice, unsuitable)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let want_timing = std::env::var("VOXFLIP_GPU_TIMESTAMPS").as_deref() == Ok("1")
            && adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("voxflip"),
            required_features: if want_timing { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() },
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", info.name)))?;
        // Software adapters take glm_stat's direct-load path (see SHARED_TILES in the shader).

        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap().push(e.to_string())));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock().unwrap().push(format!("device lost ({reason:?}): {msg}"));
        });

        let mut glm_kernel = default_kernel(&info, &limits);
        if let Ok(name) = std::env::var("VOXFLIP_GLM_KERNEL") {
            let k = GlmKernel::parse(&name).ok_or_else(|| {
                Error::Gpu(format!("VOXFLIP_GLM_KERNEL={name}: expected direct, tiles (old), wide or wide128 (new)"))
            })?;
            if let Some(why) = kernel_unsupported(&limits, k) {
                return Err(Error::Gpu(format!("VOXFLIP_GLM_KERNEL={name} on {}: {why}", info.name)));
            }
            glm_kernel = k;
        }
        let unchecked = std::env::var("VOXFLIP_GLM_UNCHECKED").as_deref() == Ok("1");
        // Sign flips need no row sources; the variant with them is built on first use.
        let kernels = [Some(build_pipeline(&device, glm_kernel, false, unchecked)), None];
        let max_macs_per_dispatch = if info.device_type == wgpu::DeviceType::DiscreteGpu {
            MAX_MACS_PER_DISPATCH_DISCRETE
        } else {
            MAX_MACS_PER_DISPATCH
        };
        let timing = want_timing.then(|| KernelTiming {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("glm_stat timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * TIMED_PASSES,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16 * TIMED_PASSES as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period: queue.get_timestamp_period() as f64,
            used: Default::default(),
            seconds: Mutex::new(0.0),
        });
        let engine = GpuEngine {
            timing,
            device,
            queue,
            kernels,
            glm_kernel,
            unchecked,
            info,
            limits,
            errors,
            broken: None,
            state: None,
            chunk_override: None,
            max_macs_per_dispatch,
            max_maps_bytes: MAPS_CAP_BYTES,
        };
        engine.poll_checked("compiling glm_stat")?;
        Ok(engine)
    }

    /// Whether glm_stat stages A and E through workgroup memory (`Tiles`, `Wide`, `Wide128`,
    /// the default on hardware adapters) or reads them straight from storage (`Direct`, the
    /// default on software adapters).
    pub fn shared_tiles(&self) -> bool {
        self.glm_kernel != GlmKernel::Direct
    }

    /// Choose glm_stat's data path: on = the adapter's preferred workgroup-tile kernel (see
    /// `TILED_PREFERENCE`), off = `Direct`. See [`GpuEngine::set_kernel`].
    pub fn set_shared_tiles(&mut self, on: bool) -> Result<()> {
        let k = if on { preferred_tiled(&self.limits) } else { GlmKernel::Direct };
        self.set_kernel(k)
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
        if let Some(why) = kernel_unsupported(&self.limits, kernel) {
            return Err(Error::Gpu(format!("{} cannot run {why}", self.info.name)));
        }
        self.glm_kernel = kernel;
        self.kernels = [None, None];
        self.state = None;
        self.ensure_kernel(false)
    }

    /// Compile the Wide kernels without wgpu's runtime checks (index clamps on every array
    /// access, a counter bounding every loop; wgpu's `ShaderRuntimeChecks::unchecked`): in
    /// the inner loop that is three clamps per 32 FMAs. Off by default; also
    /// VOXFLIP_GLM_UNCHECKED=1. The shader's own clamps keep its accesses in bounds (see the
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
                Some(build_pipeline(&self.device, self.glm_kernel, has_src, self.unchecked));
            self.poll_checked("compiling glm_stat").map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn pipeline(&self, params: &GlmParams) -> &Kernel {
        self.kernels[(params.flags & FLAG_SRC != 0) as usize].as_ref().expect("ensure_kernel first")
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether the adapter is a software implementation.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Voxels per E chunk of the prepared problem (0 before `prepare`).
    pub fn chunk_voxels(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.chunk_v)
    }

    /// Number of E chunks of the prepared problem.
    pub fn chunks(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.chunks.len())
    }

    /// The preferred batch (same as `Engine::preferred_batch`).
    pub fn batch(&self) -> usize {
        self.preferred_batch()
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    /// Wait for all submitted work and turn any error wgpu reported into `Error::Gpu`.
    fn poll_checked(&self, what: &str) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        let errs: Vec<String> = std::mem::take(&mut *self.errors.lock().unwrap());
        if !errs.is_empty() {
            return Err(Error::Gpu(format!("{what} on {}: {}", self.info.name, errs.join("; "))));
        }
        polled.map_err(|e| Error::Gpu(format!("{what} on {}: {e}", self.info.name)))?;
        Ok(())
    }

    /// Submit without waiting: the GPU runs queued submissions back to back while the host
    /// encodes the next. Errors surface at the next `poll_checked`.
    fn submit(&self, enc: wgpu::CommandEncoder) {
        self.queue.submit(Some(enc.finish()));
    }

    fn submit_checked(&self, enc: wgpu::CommandEncoder, what: &str) -> Result<()> {
        self.queue.submit(Some(enc.finish()));
        self.poll_checked(what)
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("voxflip") })
    }

    fn storage_init(&self, label: &str, bytes: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
        // A binding may not be empty: pad to one word.
        let pad = [0u8; 4];
        let contents = if bytes.is_empty() { &pad[..] } else { bytes };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | extra,
        })
    }

    fn storage_empty(&self, label: &str, bytes: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    /// Finish `enc` with copies of the first `bytes` of each of `parts` into one staging
    /// buffer, submit it and map the result: one wait for a batch's dispatches and all its
    /// results. Returns the parts' bytes concatenated in order (each a multiple of 4).
    fn submit_and_read(
        &self,
        mut enc: wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64)],
        what: &str,
    ) -> Result<Vec<u8>> {
        let total: u64 = parts.iter().map(|p| p.1).sum();
        if total == 0 {
            self.submit_checked(enc, what)?;
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0;
        for &(buf, bytes) in parts {
            if bytes > 0 {
                enc.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
            }
            at += bytes;
        }
        self.submit(enc);
        read_staging(&staging, what, || self.poll_checked(what))
    }

    /// Copy `bytes` bytes of `buf` from `offset` back to the host.
    fn read_back(&self, buf: &wgpu::Buffer, offset: u64, bytes: u64, what: &str) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder();
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, bytes);
        self.submit_checked(enc, what)?;
        read_staging(&staging, what, || self.poll_checked(what))
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
        let pbuf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("glm_stat params"),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bufs = [&pbuf, perm, qbuf, e, vox, max, counts, maps];
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("glm_stat"),
            layout: &self.pipeline(params).1,
            entries: &entries,
        })
    }

    fn encode_dispatch(&self, enc: &mut wgpu::CommandEncoder, bg: &wgpu::BindGroup, params: &GlmParams) {
        let (wx, wy) = glm_stat::workgroups(params, self.glm_kernel);
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

    /// Run glm_stat once on the device with exactly the twin's buffers
    /// ([`cpu::glm_stat::glm_stat`]): the test hook that holds the shader against its twin.
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
        self.ensure_kernel(params.flags & FLAG_SRC != 0)?;
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
        if perm_words.len() < words_needed
            || qbasis.len() < n * q
            || e.len() < n * vc
            || vox.len() < 2 * vc
            || max_bits.len() < perms_end
            || counts.len() < vc
            || maps.len() < maps_needed
            || (p.flags & FLAG_MAPS != 0 && p.maps_base > p.perm_offset)
        {
            return Err(Error::Gpu("run_glm_stat: buffers smaller than the parameters address".into()));
        }
        let (wx, wy) = glm_stat::workgroups(params, self.glm_kernel);
        let maxd = self.limits.max_compute_workgroups_per_dimension;
        if wx > maxd || wy > maxd {
            return Err(Error::Gpu(format!("dispatch {wx}x{wy} exceeds {maxd} workgroups per dimension")));
        }
        let src = wgpu::BufferUsages::COPY_SRC;
        let none = wgpu::BufferUsages::empty();
        let perm = self.storage_init("perm words", bytemuck::cast_slice(perm_words), none);
        let qbuf = self.storage_init("Q", bytemuck::cast_slice(qbasis), none);
        let ebuf = self.storage_init("E", bytemuck::cast_slice(e), none);
        let vbuf = self.storage_init("vox", bytemuck::cast_slice(vox), none);
        let mbuf = self.storage_init("max", bytemuck::cast_slice(max_bits), src);
        let cbuf = self.storage_init("counts", bytemuck::cast_slice(counts), src);
        let pbuf = self.storage_init("maps", bytemuck::cast_slice(maps), src);
        let bg = self.bind_group(params, &perm, &qbuf, &ebuf, &vbuf, &mbuf, &cbuf, &pbuf);
        let mut enc = self.encoder();
        self.encode_dispatch(&mut enc, &bg, params);
        self.submit_checked(enc, "glm_stat")?;
        let m = self.read_back(&mbuf, 0, (max_bits.len() * 4) as u64, "glm_stat max")?;
        max_bits.copy_from_slice(bytemuck::cast_slice(&m));
        let c = self.read_back(&cbuf, 0, (counts.len() * 4) as u64, "glm_stat counts")?;
        counts.copy_from_slice(bytemuck::cast_slice(&c));
        if params.flags & FLAG_MAPS != 0 {
            let p = self.read_back(&pbuf, 0, (maps.len() * 4) as u64, "glm_stat maps")?;
            maps.copy_from_slice(bytemuck::cast_slice(&p));
        }
        Ok(())
    }

    fn prepare_inner(&mut self, pb: &ContrastProblem) -> Result<()> {
        self.state = None;
        let (n, v, q) = (pb.n, pb.v, pb.q);
        if n == 0 || q == 0 || pb.s == 0 || pb.s > q {
            return Err(Error::Gpu(format!("invalid problem: n={n}, q={q}, s={}", pb.s)));
        }
        if pb.e.len() != n * v || pb.qbasis.len() != n * q || pb.ss.len() != v {
            return Err(Error::Gpu("problem buffers do not match n, v, q".into()));
        }
        let binding = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        // At least the Tiles kernel's 32 (as before for Direct, whose tiles hold 4).
        let tp = self.glm_kernel.tile_perms().max(glm_stat::TP);
        let mut chunk_v = plan_chunk_voxels(&self.limits, n, q, self.max_macs_per_dispatch, tp);
        if let Some(c) = self.chunk_override {
            chunk_v = chunk_v.min(c.max(1));
        }
        if chunk_v == 0 {
            return Err(Error::Gpu(format!("N = {n} rows do not fit one storage binding of {binding} bytes")));
        }
        chunk_v = chunk_v.min(v.max(1));
        if (n * q) as u64 * 4 > binding {
            return Err(Error::Gpu("Q does not fit one storage binding".into()));
        }
        let qbuf = self.storage_init("Q", bytemuck::cast_slice(&pb.qbasis), wgpu::BufferUsages::empty());
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
            chunks.push(Chunk {
                v0,
                vc,
                e: self.storage_init("E chunk", bytemuck::cast_slice(&e), wgpu::BufferUsages::empty()),
                vox: self.storage_init("vox", bytemuck::cast_slice(&vox), wgpu::BufferUsages::COPY_DST),
                counts: self.storage_empty("counts", 4 * vc as u64, copy),
            });
            drop(e);
            // Upload chunk by chunk so that the staging copies do not pile up.
            self.poll_checked("uploading E")?;
            v0 += vc;
        }
        let per_perm = (n * q * v.max(1)) as f64;
        let target = if self.is_software() { TARGET_MACS_PER_BATCH } else { TARGET_MACS_PER_BATCH_HARDWARE };
        let mut batch = (target / per_perm) as usize;
        batch = batch.clamp(tp as usize, 16384);
        batch -= batch % tp as usize;
        self.state = Some(Resident { n, v, q, s: pb.s, kind: pb.kind, dof: pb.dof, qbuf, chunks, chunk_v, batch });
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
        self.ensure_kernel(!perms.all_src().is_empty())?;
        let st = self.state.as_ref().ok_or_else(|| Error::Gpu("run_batch before prepare".into()))?;
        let (n, v, q) = (st.n, st.v, st.q);
        let b = range.len();
        if perms.n != n {
            return Err(Error::Gpu(format!("permutation set has N = {}, problem N = {n}", perms.n)));
        }
        if range.end > perms.len() {
            return Err(Error::Gpu(format!("permutations {range:?} out of {}", perms.len())));
        }
        if let Some(o) = observed {
            if o.len() != v {
                return Err(Error::Gpu(format!("observed map has {} voxels, expected {v}", o.len())));
            }
        }
        if let Some(m) = maps.as_deref() {
            if m.len() != b * v {
                return Err(Error::Gpu(format!("maps buffer has {} values, expected {}", m.len(), b * v)));
            }
        }
        if b == 0 {
            let empty = BatchResult {
                max_stat: Vec::new(),
                exceed: if observed.is_some() { vec![0; v] } else { Vec::new() },
            };
            return Ok((empty, None));
        }
        if keep && (maps.is_some() || !self.can_keep_maps(b)) {
            return Err(Error::Gpu(format!("cannot keep {b} maps on the device")));
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
        let binding = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        if words.len() as u64 * 4 > binding {
            return Err(Error::Gpu(format!("batch of {b} permutations is too large for one binding")));
        }
        let perm_buf = self.storage_init("perm words", bytemuck::cast_slice(&words), wgpu::BufferUsages::empty());
        let max_buf = self.storage_init("max", bytemuck::cast_slice(&vec![0u32; b]), wgpu::BufferUsages::COPY_SRC);
        let mut flags = if has_src { FLAG_SRC } else { 0 };
        if observed.is_some() {
            flags |= FLAG_OBSERVED;
        }
        if maps.is_some() || keep {
            flags |= FLAG_MAPS;
        }
        let mut enc = self.encoder();
        for c in &st.chunks {
            if let Some(o) = observed {
                self.queue.write_buffer(&c.vox, (4 * c.vc) as u64, bytemuck::cast_slice(&o[c.v0..c.v0 + c.vc]));
                enc.clear_buffer(&c.counts, 0, None);
            }
        }
        // Permutations whose maps fit one readback buffer for the widest chunk.
        let maps_cap = binding.min(self.max_maps_bytes);
        let group = if maps.is_some() { ((maps_cap / (4 * st.chunk_v as u64)) as usize).clamp(1, b) } else { b };
        let maps_buf = if maps.is_some() || keep {
            Some(self.storage_empty("maps", (4 * group * st.chunk_v) as u64, wgpu::BufferUsages::COPY_SRC))
        } else {
            None
        };
        let dummy = self.storage_empty("no maps", 4, wgpu::BufferUsages::empty());
        let maxd = self.limits.max_compute_workgroups_per_dimension as usize;
        let kind = match st.kind {
            StatKind::T => 0,
            StatKind::F => 1,
        };

        let mut pending: u64 = 0;
        for g0 in (0..b).step_by(group) {
            let g1 = (g0 + group).min(b);
            for c in &st.chunks {
                let per_perm = (c.vc * n * q) as u64;
                let tile_perms = self.glm_kernel.tile_perms() as usize;
                let round = tile_perms.max(glm_stat::TP as usize);
                let mut pd = ((self.max_macs_per_dispatch / per_perm.max(1)) as usize).max(1);
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
                        pad: [0; 4],
                    };
                    let bg = self.bind_group(
                        &params,
                        &perm_buf,
                        &st.qbuf,
                        &c.e,
                        &c.vox,
                        &max_buf,
                        &c.counts,
                        maps_buf.as_ref().unwrap_or(&dummy),
                    );
                    self.encode_dispatch(&mut enc, &bg, &params);
                    pending += per_perm * (pz - pa) as u64;
                    if pending >= self.max_macs_per_dispatch {
                        // Each submission stays within the work bound; no wait in between
                        // (the batch's final submit_checked / read_back polls and checks).
                        self.submit(std::mem::replace(&mut enc, self.encoder()));
                        pending = 0;
                    }
                    pa = pz;
                }
                if let (Some(mb), Some(out)) = (maps_buf.as_ref(), maps.as_deref_mut()) {
                    self.submit_checked(std::mem::replace(&mut enc, self.encoder()), "glm_stat")?;
                    pending = 0;
                    let bytes = self.read_back(mb, 0, (4 * (g1 - g0) * c.vc) as u64, "reading maps")?;
                    let vals: &[f32] = bytemuck::cast_slice(&bytes);
                    for (r, row) in vals.chunks_exact(c.vc).enumerate() {
                        let at = (g0 + r) * v + c.v0;
                        out[at..at + c.vc].copy_from_slice(row);
                    }
                }
            }
        }
        // The maxima and the counts of every chunk come back with the last dispatches: one
        // submission and one wait per batch (was one per buffer).
        let mut parts = vec![(&max_buf, 4 * b as u64)];
        if observed.is_some() {
            parts.extend(st.chunks.iter().map(|c| (&c.counts, 4 * c.vc as u64)));
        }
        let stamped = self.timing.as_ref().map_or(0, |t| t.used.swap(0, std::sync::atomic::Ordering::Relaxed));
        if let (Some(t), true) = (&self.timing, stamped > 0) {
            enc.resolve_query_set(&t.set, 0..stamped, &t.resolve, 0);
            parts.push((&t.resolve, 8 * stamped as u64));
        }
        let bytes = self.submit_and_read(enc, &parts, "glm_stat results")?;
        if let (Some(t), true) = (&self.timing, stamped > 0) {
            let at = bytes.len() - 8 * stamped as usize;
            // Byte-wise: the part need not be 8-byte aligned within the readback.
            let ticks: Vec<u64> =
                bytes[at..].chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes"))).collect();
            let ns: f64 = ticks.chunks_exact(2).map(|p| p[1].saturating_sub(p[0]) as f64).sum::<f64>() * t.period;
            *t.seconds.lock().unwrap() += ns * 1e-9;
        }
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let max_stat: Vec<f32> = words[..b].iter().map(|&k| glm_stat::value_of(k)).collect();
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
    /// VOXFLIP_GPU_TIMESTAMPS=1 and the adapter supports them). Excludes host waits and
    /// transfers: the kernels' own throughput.
    pub fn kernel_seconds(&self) -> Option<f64> {
        self.timing.as_ref().map(|t| *t.seconds.lock().unwrap())
    }

    /// Whether a batch of `b` maps can stay on the device ([`GpuEngine::run_batch_on_device`]):
    /// the prepared problem is one chunk (all voxels) and b x V floats fit one binding.
    pub fn can_keep_maps(&self, b: usize) -> bool {
        let binding = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        self.state.as_ref().is_some_and(|st| st.chunks.len() == 1 && (4 * b * st.v) as u64 <= binding)
    }

    /// [`Engine::run_batch`] with the batch's statistic maps left on the device: returns the
    /// reductions and a buffer of range.len() x V floats (permutation-major) that spatial
    /// statistics on this device ([`GpuEngine::shared_device`]) read directly, so the maps
    /// never cross the bus. The buffer lives as long as the caller holds it.
    pub fn run_batch_on_device(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
    ) -> Result<(BatchResult, wgpu::Buffer)> {
        if let Some(b) = &self.broken {
            return Err(Error::Gpu(format!("engine unusable after an earlier error: {b}")));
        }
        if !self.can_keep_maps(range.len()) {
            // A caller's mistake, not a device failure: the engine stays usable.
            return Err(Error::Gpu(format!("cannot keep {} maps on the device", range.len())));
        }
        let (r, buf) = self.run_inner_keep(perms, range, observed, None, true).map_err(|e| self.fail(e))?;
        Ok((r, buf.expect("kept maps buffer")))
    }

    /// This engine's device, for other GPU stages that must read its buffers.
    pub fn shared_device(&self) -> SharedDevice {
        SharedDevice {
            device: self.device.clone(),
            queue: self.queue.clone(),
            info: self.info.clone(),
            limits: self.limits.clone(),
            errors: self.errors.clone(),
        }
    }
}

/// A device opened by [`GpuEngine`], shared with other GPU stages (the spatial reducer), so
/// that they can use the engine's buffers. wgpu reports errors through one callback per
/// device: `errors` is that callback's sink, which every stage drains after its polls.
#[derive(Clone)]
pub struct SharedDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Engine for GpuEngine {
    fn as_gpu(&mut self) -> Option<&mut GpuEngine> {
        Some(self)
    }

    fn spatial_adapter(&self) -> Option<AdapterChoice> {
        let wanted = match std::env::var("VOXFLIP_GPU_SPATIAL").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => !self.is_software(),
        };
        wanted.then(|| AdapterChoice { name: Some(self.info.name.clone()), allow_software: true })
    }

    fn describe(&self) -> String {
        let mut d = format!(
            "gpu: {} ({:?}, {:?}, driver {} {}), glm_stat {}{}",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
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
        if self.state.is_some() {
            d += &format!(", E chunk {} voxels, batch {}", self.chunk_voxels(), self.preferred_batch());
        }
        d
    }

    fn prepare(&mut self, problem: &ContrastProblem) -> Result<()> {
        if let Some(b) = &self.broken {
            return Err(Error::Gpu(format!("engine unusable after an earlier error: {b}")));
        }
        self.prepare_inner(problem).map_err(|e| self.fail(e))
    }

    fn preferred_batch(&self) -> usize {
        self.state.as_ref().map_or(1024, |s| s.batch)
    }

    fn run_batch(
        &mut self,
        perms: &PermSet,
        range: Range<usize>,
        observed: Option<&[f32]>,
        maps: Option<&mut [f32]>,
    ) -> Result<BatchResult> {
        if let Some(b) = &self.broken {
            return Err(Error::Gpu(format!("engine unusable after an earlier error: {b}")));
        }
        self.run_inner(perms, range, observed, maps).map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = plan_chunk_voxels(&limits(128 << 20), n, q, MAX_MACS_PER_DISPATCH, glm_stat::TP);
        assert!(c > 0 && (4 * n * c) as u64 <= 128 << 20 && c.is_multiple_of(TV as usize));
        assert!(v.div_ceil(c) >= 4, "several chunks on lavapipe: {c}");
        // A 4 GiB card (2 GiB bindings): chunks within the 1 GiB cap and the dispatch bound.
        let c = plan_chunk_voxels(&limits(2 << 30), n, q, MAX_MACS_PER_DISPATCH, glm_stat::TP);
        assert!((4 * n * c) as u64 <= E_CHUNK_CAP_BYTES);
        assert!((n * q * c * glm_stat::TP as usize) as u64 <= MAX_MACS_PER_DISPATCH);
        // N = 58: one chunk of the whole brain fits both.
        assert!(plan_chunk_voxels(&limits(128 << 20), 58, 2, MAX_MACS_PER_DISPATCH, glm_stat::TP) >= v);
        // The Wide kernel's 128-permutation tiles on a discrete GPU: still one chunk.
        let tp = glm_stat::wide::TP;
        assert!(plan_chunk_voxels(&limits(2 << 30), 58, 2, MAX_MACS_PER_DISPATCH_DISCRETE, tp) >= v);
    }
}
