//! Spatial inference on the GPU: connected components, cluster extent / mass and stepwise
//! TFCE of permutation maps (the shaders crate's `label_components.wgsl` and `tfce.wgsl`), reduced
//! to the same null statistics as [`SpatialJob::reduce`] on the CPU.
//!
//! [`GpuSpatial`] works on a [`Device`] (the GPU engine's, or its own on the adapter an
//! [`AdapterChoice`] selects), uploads
//! the mask graphs' neighbour tables once, and for each batch uploads the maps and runs, per
//! sub-batch of maps that fits one storage binding: the extent and mass passes (label at the
//! cluster-forming threshold, measure, per-map maxima), then the TFCE levels (label
//! {T > h_k}, measure sizes, accumulate size^E h_k^H), the per-map TFCE maxima and the
//! exceedance counts. Only per-map maxima and the counts come back.
//!
//! The TFCE levels run from the top down over one union-find: the set {T > h_k} only grows
//! as k falls, so components only merge, and each voxel is hooked once, when it enters (a
//! streaming compare over the batch appends the entering voxels to the active list). Roots,
//! sizes and the TFCE terms are then computed over the active list only, with indirect
//! dispatches sized on the device (`set_args`): no read-back between levels, and each level
//! costs in proportion to its active voxels (for null maps a few percent of the batch above
//! T = 2) plus one cheap whole-batch compare and four dispatches (the sizes of one level and
//! the terms of the level above share a pass). The cluster passes (one level each) run over
//! the whole batch.
//!
//! Numerics (the CPU ports in the shaders crate reproduce them; the spatial twin tests):
//! - labels are exact and deterministic (root = smallest voxel index of the component);
//! - extents are exact; masses are 64-bit fixed point ([`MassScale`], one scale per map so
//!   that a map's result does not depend on its batch), order independent, within
//!   (maxabs / thr) 2^-30 + 2^-22 relative of the exact sum;
//! - TFCE is summed in f32, one term per level from the top level down (the CPU reference
//!   sums in f64, bottom up; all terms are positive, so the error bound is the same): the
//!   GPU and the twin differ only by the driver's rounding of `a * b + c` (it may fuse),
//!   the reference by at most levels x 2^-24 relative.
//!
//! Limits: a sub-batch whose maximum needs more than
//! [`MAX_LEVELS`](voxflip_shaders::cpu::tfce::MAX_LEVELS) TFCE levels (the CPU allows 2^24)
//! is refused as [`EngineError::Unsupported`] (the CPU takes it); each level costs four
//! dispatches. A +inf value enters a cluster with a
//! clamped, finite mass contribution (the CPU's mass is infinite).
//!
//! Exact TFCE (`--tfce-exact`) runs its own kernels ([`exact`]: per map a sort by value and
//! a sequential union-find sweep, the maps in parallel), in place of the levels.
mod exact;

use super::adapters::{select_adapter, AdapterChoice};
use super::device::Device;
use crate::error::{EngineError, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use voxflip_shaders::cpu::label_components::MassScale;
use voxflip_shaders::cpu::tfce::{level_table, size_pow_table};
use voxflip_shaders::cpu::tfce_exact::size_pow_table as exact_size_pow_table;
use voxflip_shaders::keys::{key_of, value_of};
use voxflip_shaders::spatial::{self as sp, wgsl_source, SpatialParams};
use voxflip_shaders::spatial::{FLAG_FIRST, FLAG_MASS, FLAG_PREV, LIST_NEW, MODE_INCLUSIVE, MODE_TFCE, NO_LIST, WG};
use voxflip_stats::spatial::{MaskGraph, SpatialJob, SpatialNull, TfceParams};

// The shaders' buffer layouts, as host indices.
const RES_STRIDE: usize = sp::RES_STRIDE as usize;
const RES_TFCE: usize = sp::RES_TFCE as usize;
const RES_SCALE: usize = sp::RES_SCALE as usize;
const LIST_HEAD: usize = sp::LIST_HEAD as usize;
const L_WORK: usize = sp::L_WORK as usize;

/// Storage buffers the kernels bind.
const STORAGE_BUFFERS: u32 = 11;
/// Voxel-maps per sub-batch at most: bounds each dispatch's work (a watchdog concern on
/// desktop GPUs) and the memory, ~24 bytes per voxel-map.
const MAX_VOXEL_MAPS: usize = 1 << 24;
/// Dispatches per submission before the device is polled.
const DISPATCHES_PER_SUBMIT: usize = 64;

/// Outputs of [`GpuSpatial::cluster_stats`], per voxel of the batch and per map.
#[derive(Clone, Debug)]
pub struct ClusterStats {
    /// Root (map-local smallest voxel index of the component) per voxel, or `NONE`.
    pub parent: Vec<u32>,
    /// `[size, mass lo, mass hi]` per voxel, non-zero at roots.
    pub acc: Vec<[u32; 3]>,
    /// Per map: the largest extent and the largest mass (−inf when there is no cluster).
    pub max: Vec<(u32, f32)>,
    /// The fixed point of each map's masses.
    pub scales: Vec<MassScale>,
}

/// Outputs of [`GpuSpatial::tfce_batch`].
#[derive(Clone, Debug)]
pub struct TfceBatch {
    pub tfce: Vec<f32>,
    pub max: Vec<f32>,
    /// Exceedance counts over the batch (empty without an observed map).
    pub counts: Vec<u32>,
}

struct GraphBuf {
    buf: wgpu::Buffer,
    width: usize,
    v: usize,
}

struct TfceSetup {
    graph: GraphBuf,
    params: TfceParams,
    dh: f32,
    /// s^E in f32 (stepwise), or s^E / (H + 1) as two f32 (exact).
    sizepow: wgpu::Buffer,
    exact: bool,
}

struct ClusterSetup {
    graph: Option<GraphBuf>,
    extent_thr: Option<f32>,
    mass_thr: Option<f32>,
}

struct Pipes {
    init: wgpu::ComputePipeline,
    hook: wgpu::ComputePipeline,
    compress: wgpu::ComputePipeline,
    measure: wgpu::ComputePipeline,
    cluster_max: wgpu::ComputePipeline,
    enter: wgpu::ComputePipeline,
    set_args: wgpu::ComputePipeline,
    compress_measure: wgpu::ComputePipeline,
    accumulate: wgpu::ComputePipeline,
    tfce_counts: wgpu::ComputePipeline,
}

/// One cluster-forming pass of a run.
struct ClusterPass<'a> {
    graph: &'a GraphBuf,
    thr: f32,
    slot: usize,
    mass: bool,
}

/// Where a batch's maps are: the named variant of maps the GPU engine left on its device.
#[derive(Clone, Copy)]
pub enum BatchMaps<'a> {
    /// On the host, map-major.
    Host(&'a [f32]),
    /// In a device buffer of the same device (map-major), with each map's maximum (which
    /// fixes the TFCE levels and the mass fixed point without reading the maps back).
    Device { buf: &'a wgpu::Buffer, maxima: &'a [f32] },
}

impl BatchMaps<'_> {
    /// Number of maps of `v` voxels.
    pub fn nmaps(&self, v: usize) -> usize {
        match self {
            BatchMaps::Host(m) => m.len() / v,
            BatchMaps::Device { maxima, .. } => maxima.len(),
        }
    }
}

/// What one run over a batch does and reads back.
struct Request<'a> {
    maps: BatchMaps<'a>,
    v: usize,
    clusters: Vec<ClusterPass<'a>>,
    tfce: Option<(&'a GraphBuf, f32, f32, &'a wgpu::Buffer)>, // graph, dh, H, sizepow
    observed: Option<&'a wgpu::Buffer>,
    read_labels: bool,
    read_tfce: bool,
}

#[derive(Default)]
struct Output {
    results: Vec<u32>,
    parent: Vec<u32>,
    acc: Vec<u32>,
    tfce: Vec<f32>,
    counts: Vec<u32>,
    scales: Vec<MassScale>,
}

/// Device buffers of one sub-batch size, kept between calls.
struct Work {
    nb: usize,
    v: usize,
    maps: wgpu::Buffer,
    parent: wgpu::Buffer,
    acc: wgpu::Buffer,
    tfce: wgpu::Buffer,
    results: wgpu::Buffer,
    /// TFCE active list: LIST_HEAD counters, then up to nb * v batch indices.
    list: wgpu::Buffer,
    /// Indirect dispatch arguments of the list passes.
    args: wgpu::Buffer,
}

/// Spatial statistics of permutation maps on the GPU (see the module docs).
pub struct GpuSpatial {
    device: Device,
    /// Set once the device failed: later calls fail fast.
    broken: Option<EngineError>,
    layout: wgpu::BindGroupLayout,
    pipes: Pipes,
    dummy: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    /// TFCE voxel-levels processed (sum of the active list lengths) and the whole-batch
    /// equivalent (voxels x maps x levels), since the last [`GpuSpatial::take_tfce_work`].
    tfce_work: [AtomicU64; 2],
    tfce: Option<TfceSetup>,
    cluster: Option<ClusterSetup>,
    observed: Option<(wgpu::Buffer, usize)>,
    work: Option<Work>,
    /// The exact TFCE kernels, compiled when a job first asks for them.
    exact: Option<exact::ExactPipes>,
    /// Limits tests shrink to exercise sub-batches and two-dimensional grids.
    pub tuning: SpatialTuning,
}

/// Limits that size the spatial kernels' work; None: from the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpatialTuning {
    /// Most maps per sub-batch.
    pub max_maps_per_pass: Option<usize>,
    /// Most workgroups per dispatch dimension: small values run the two-dimensional grids
    /// (direct and indirect) on small batches.
    pub max_groups_per_dim: Option<u32>,
}

fn unsuitable(a: &wgpu::Adapter) -> Option<String> {
    let l = a.limits();
    if !a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
        return Some("no compute shaders".into());
    }
    if l.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS {
        return Some(format!("fewer than {STORAGE_BUFFERS} storage buffers per stage"));
    }
    if l.max_compute_invocations_per_workgroup < WG || l.max_compute_workgroup_size_x < WG {
        return Some(format!("workgroups of {WG} not supported"));
    }
    None
}

/// The largest positive finite value of a map (NEG_INFINITY if none): all that the TFCE
/// levels and (for thresholds > 0) the mass fixed point depend on.
fn positive_max(map: &[f32]) -> f32 {
    map.iter().copied().filter(|x| x.is_finite() && *x > 0.0).fold(f32::NEG_INFINITY, f32::max)
}

impl GpuSpatial {
    /// Open the adapter `choice` selects (the adapter's own limits) and compile the kernels;
    /// nothing is configured yet (see [`GpuSpatial::configure`]).
    pub fn open(choice: &AdapterChoice) -> Result<GpuSpatial> {
        let adapter = select_adapter(choice, unsuitable)?;
        Self::build(Device::open(&adapter, wgpu::Features::empty(), "voxflip spatial")?)
    }

    /// The spatial kernels on `device`, e.g. the GPU engine's own ([`super::GpuEngine::device`]),
    /// so that [`BatchMaps::Device`] maps of the engine are read where they are. Errors reach
    /// the engine's sink too.
    pub fn on_device(device: Device) -> Result<GpuSpatial> {
        if device.limits().max_storage_buffers_per_shader_stage < STORAGE_BUFFERS {
            return Err(EngineError::Unsupported(format!(
                "{}: fewer than {STORAGE_BUFFERS} storage buffers per stage",
                device.info().name
            )));
        }
        Self::build(device)
    }

    /// Bind group layout, pipelines and fixed buffers on an open device.
    fn build(dev: Device) -> Result<GpuSpatial> {
        let device = dev.wgpu();
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(std::mem::size_of::<SpatialParams>() as u64),
            },
            count: None,
        }];
        // nbrs, maps, parent, acc, tfce, sizepow, results, observed, counts, list, args
        for (b, ro) in [
            (1, true),
            (2, true),
            (3, false),
            (4, false),
            (5, false),
            (6, true),
            (7, false),
            (8, true),
            (9, false),
            (10, false),
            (11, false),
        ] {
            entries.push(storage(b, ro));
        }
        let layout = device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("spatial"), entries: &entries });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("spatial"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("label_components + tfce"),
            source: wgpu::ShaderSource::Wgsl(wgsl_source().into()),
        });
        let pipe = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipes = Pipes {
            init: pipe("init"),
            hook: pipe("hook"),
            compress: pipe("compress"),
            measure: pipe("measure"),
            cluster_max: pipe("cluster_max"),
            enter: pipe("enter"),
            set_args: pipe("set_args"),
            compress_measure: pipe("compress_measure"),
            accumulate: pipe("accumulate"),
            tfce_counts: pipe("tfce_counts"),
        };
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // A separate one for the read-write `args` binding: one buffer may not be bound
        // read-only and read-write in the same dispatch.
        let dummy_rw = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused read-write binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let s = GpuSpatial {
            device: dev.clone(),
            broken: None,
            layout,
            pipes,
            dummy,
            dummy_rw,
            tfce_work: Default::default(),
            tfce: None,
            cluster: None,
            observed: None,
            work: None,
            exact: None,
            tuning: SpatialTuning::default(),
        };
        s.device.poll("compiling the spatial kernels")?;
        Ok(s)
    }

    /// [`GpuSpatial::open`] and [`GpuSpatial::configure`] for `job`.
    pub fn new(choice: &AdapterChoice, job: &SpatialJob) -> Result<GpuSpatial> {
        let mut s = Self::open(choice)?;
        s.configure(job)?;
        Ok(s)
    }

    /// Take the work of `job`: upload its graphs' neighbour tables, the TFCE size table and
    /// the observed TFCE map (exact TFCE compiles its kernels here, the first time).
    pub fn configure(&mut self, job: &SpatialJob) -> Result<()> {
        self.tfce = None;
        self.cluster = None;
        self.observed = None;
        let mut v_job = None;
        if let Some((g, o, dh)) = job.tfce {
            if g.connectivity() != o.params.conn {
                return Err(EngineError::Invalid("TFCE connectivity differs from the mask graph's".into()));
            }
            let sizepow = if o.exact {
                self.exact_pipes()?;
                let table = exact_size_pow_table(g.len(), o.params.e, o.params.h);
                self.storage_init("exact tfce sizepow", bytemuck::cast_slice(&table))
            } else {
                self.storage_init("tfce sizepow", bytemuck::cast_slice(&size_pow_table(g.len(), o.params.e)))
            };
            let exact = o.exact;
            self.tfce = Some(TfceSetup { graph: self.upload_graph(g), params: o.params, dh, sizepow, exact });
            v_job = Some(g.len());
        }
        if job.extent_thr.is_some() || job.mass_thr.is_some() {
            let graph = job.cluster_graph.map(|g| self.upload_graph(g));
            if let (Some(g), Some(v)) = (&graph, v_job) {
                if g.v != v {
                    return Err(EngineError::Invalid("TFCE and cluster graphs have different voxel counts".into()));
                }
            }
            self.cluster = Some(ClusterSetup { graph, extent_thr: job.extent_thr, mass_thr: job.mass_thr });
        }
        if let Some(obs) = job.tfce_observed {
            self.upload_tfce_observed(obs);
        }
        self.device.poll("uploading the spatial tables")
    }

    /// The observed TFCE map of the configured job, for the exceedance counts (when it is
    /// known only after [`GpuSpatial::configure`]: it is computed on this reducer).
    pub fn set_tfce_observed(&mut self, observed: &[f32]) -> Result<()> {
        self.check_usable()?;
        self.upload_tfce_observed(observed);
        self.device.poll("uploading the observed TFCE map").map_err(|e| self.fail(e))
    }

    fn upload_tfce_observed(&mut self, obs: &[f32]) {
        let buf = self.storage_init("observed tfce", bytemuck::cast_slice(obs));
        self.observed = Some((buf, obs.len()));
    }

    /// TFCE work since the last call: (voxel-levels processed, i.e. the summed lengths of the
    /// active lists; voxels x maps x levels, what whole-batch passes would have touched).
    pub fn take_tfce_work(&self) -> (u64, u64) {
        (self.tfce_work[0].swap(0, Ordering::Relaxed), self.tfce_work[1].swap(0, Ordering::Relaxed))
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        self.device.info()
    }

    /// Reduce a batch of maps (map-major, `v` voxels each) into `null`: the same fields, in
    /// the same order, as [`SpatialJob::reduce`] of the configured job.
    ///
    /// [`BatchMaps::Device`] maps are already on this device: maxima.len() maps of `v`
    /// voxels (e.g. from [`super::GpuEngine::run_batch_on_device`] on the device this reducer
    /// was made [`GpuSpatial::on_device`] with), with each map's maximum, which fixes its TFCE
    /// levels and mass fixed point, so nothing is read back but the results. Cluster mass
    /// needs a threshold > 0 there (a negative one would need each map's largest |value|).
    pub fn reduce(&mut self, maps: BatchMaps, v: usize, null: &mut SpatialNull) -> Result<()> {
        self.check_usable()?;
        match maps {
            BatchMaps::Host(m) => {
                if v == 0 || !m.len().is_multiple_of(v) {
                    return Err(EngineError::Invalid(format!(
                        "{} map values are not a whole number of maps of {v} voxels",
                        m.len()
                    )));
                }
            }
            BatchMaps::Device { buf, maxima } => {
                if v == 0 || buf.size() < (4 * v * maxima.len()) as u64 {
                    return Err(EngineError::Invalid(format!(
                        "device maps buffer too small for {} maps of {v} voxels",
                        maxima.len()
                    )));
                }
                if let Some(ClusterSetup { mass_thr: Some(thr), .. }) = &self.cluster {
                    // Negated: a NaN threshold is refused too.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let unusable = !(*thr > 0.0);
                    if unusable {
                        return Err(EngineError::Invalid(format!(
                            "cluster mass at threshold {thr} needs the maps on the host"
                        )));
                    }
                }
            }
        }
        self.reduce_source(maps, v, null)
    }

    fn reduce_source(&mut self, maps: BatchMaps, v: usize, null: &mut SpatialNull) -> Result<()> {
        let nmaps = maps.nmaps(v);
        self.prepare_n(nmaps, v).map_err(|e| self.fail(e))?;
        if let Some((_, n)) = &self.observed {
            if *n != v {
                return Err(EngineError::Invalid(format!("observed TFCE map has {n} voxels, maps have {v}")));
            }
        }
        let mut clusters = Vec::new();
        let (mut want_ext, mut want_mass) = (false, false);
        if let Some(c) = &self.cluster {
            want_ext = c.extent_thr.is_some();
            want_mass = c.mass_thr.is_some();
            if let Some(g) = &c.graph {
                if g.v != v {
                    return Err(EngineError::Invalid(format!("cluster graph has {} voxels, maps have {v}", g.v)));
                }
                if let Some(thr) = c.extent_thr {
                    clusters.push(ClusterPass { graph: g, thr, slot: 0, mass: false });
                }
                if let Some(thr) = c.mass_thr {
                    clusters.push(ClusterPass { graph: g, thr, slot: 2, mass: true });
                }
            }
        }
        let has_graph = self.cluster.as_ref().is_some_and(|c| c.graph.is_some());
        let tfce = match &self.tfce {
            Some(t) => {
                if t.graph.v != v {
                    return Err(EngineError::Invalid(format!("TFCE graph has {} voxels, maps have {v}", t.graph.v)));
                }
                Some((&t.graph, t.dh, t.params.h, &t.sizepow))
            }
            None => None,
        };
        // Exact TFCE runs its own kernels; the request then holds the cluster passes only.
        let exact = self.tfce.as_ref().filter(|t| t.exact);
        let observed = self.observed.as_ref().map(|o| &o.0);
        let req = Request {
            maps,
            v,
            tfce: if exact.is_some() { None } else { tfce },
            observed: if exact.is_some() { None } else { observed },
            clusters,
            read_labels: false,
            read_tfce: false,
        };
        let (out, exact_out) = if let Some(t) = exact {
            let cluster_out = if req.clusters.is_empty() {
                Ok(Output { results: vec![0; nmaps * RES_STRIDE], ..Default::default() })
            } else {
                self.run(&req)
            };
            let run =
                exact::ExactRun { graph: &t.graph, sizepow: &t.sizepow, h: t.params.h, observed, read_tfce: false };
            let exact_out = cluster_out.and_then(|o| Ok((o, Some(self.run_exact(maps, v, &run)?))));
            exact_out.map_err(|e| self.fail(e))?
        } else {
            (self.run(&req).map_err(|e| self.fail(e))?, None)
        };
        let mut out = out;
        if let Some(e) = exact_out {
            out.counts = e.counts;
            for (r, &m) in out.results.chunks_mut(RES_STRIDE).zip(&e.max) {
                r[RES_TFCE] = key_of(m);
            }
        }
        for j in 0..nmaps {
            let r = &out.results[j * RES_STRIDE..(j + 1) * RES_STRIDE];
            if self.tfce.is_some() {
                null.tfce_max.push(value_of(r[RES_TFCE]));
            }
            if want_ext {
                null.extent_max.push(if has_graph { r[0] as f32 } else { f32::NAN });
            }
            if want_mass {
                // No cluster: 0, as cluster_sizes_masses.
                null.mass_max.push(if !has_graph {
                    f32::NAN
                } else if r[2] == 0 {
                    0.0
                } else {
                    value_of(r[3])
                });
            }
        }
        if self.observed.is_some() {
            if null.tfce_counts.is_empty() {
                null.tfce_counts = vec![0; v];
            }
            for (a, &b) in null.tfce_counts.iter_mut().zip(&out.counts) {
                *a += b;
            }
        }
        Ok(())
    }

    /// Test hook: the labels of `maps` over `g` at `thr` (`mode`: `MODE_INCLUSIVE` or
    /// `MODE_TFCE`), as [`super::cpu::label_components::label_components`] returns them.
    pub fn label_components(&mut self, g: &MaskGraph, maps: &[f32], thr: f32, mode: u32) -> Result<Vec<u32>> {
        self.check_usable()?;
        self.prepare(maps, g.len())?;
        let graph = self.upload_graph(g);
        let req = Request {
            maps: BatchMaps::Host(maps),
            v: g.len(),
            clusters: vec![ClusterPass { graph: &graph, thr, slot: 0, mass: false }],
            tfce: None,
            observed: None,
            read_labels: true,
            read_tfce: false,
        };
        let out = self.run_mode(&req, mode);
        Ok(out.map_err(|e| self.fail(e))?.parent)
    }

    /// Test hook: components, sizes, masses and per-map maxima of `maps` over `g` at `thr`
    /// (inclusive rule), as the `measure` and `cluster_max` twins give them.
    pub fn cluster_stats(&mut self, g: &MaskGraph, maps: &[f32], thr: f32) -> Result<ClusterStats> {
        self.check_usable()?;
        self.prepare(maps, g.len())?;
        let graph = self.upload_graph(g);
        let v = g.len();
        let req = Request {
            maps: BatchMaps::Host(maps),
            v,
            clusters: vec![ClusterPass { graph: &graph, thr, slot: 0, mass: true }],
            tfce: None,
            observed: None,
            read_labels: true,
            read_tfce: false,
        };
        let out = self.run(&req);
        let out = out.map_err(|e| self.fail(e))?;
        let acc = out.acc.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        let max = out.results.chunks(RES_STRIDE).map(|r| (r[0], value_of(r[1]))).collect();
        Ok(ClusterStats { parent: out.parent, acc, max, scales: out.scales })
    }

    /// Test hook: stepwise TFCE maps of `maps` over `g`, per-map maxima, and counts against
    /// `observed`, as the [`super::cpu::tfce`] twins give them.
    pub fn tfce_batch(
        &mut self,
        g: &MaskGraph,
        maps: &[f32],
        params: &TfceParams,
        dh: f32,
        observed: Option<&[f32]>,
    ) -> Result<TfceBatch> {
        self.check_usable()?;
        self.prepare(maps, g.len())?;
        let graph = self.upload_graph(g);
        let sizepow = self.storage_init("tfce sizepow", bytemuck::cast_slice(&size_pow_table(g.len(), params.e)));
        let obs = observed.map(|o| self.storage_init("observed tfce", bytemuck::cast_slice(o)));
        let req = Request {
            maps: BatchMaps::Host(maps),
            v: g.len(),
            clusters: vec![],
            tfce: Some((&graph, dh, params.h, &sizepow)),
            observed: obs.as_ref(),
            read_labels: false,
            read_tfce: true,
        };
        let out = self.run(&req);
        let out = out.map_err(|e| self.fail(e))?;
        let max = out.results.chunks(RES_STRIDE).map(|r| value_of(r[RES_TFCE])).collect();
        Ok(TfceBatch { tfce: out.tfce, max, counts: out.counts })
    }

    /// Test hook: exact TFCE maps of `maps` over `g`, per-map maxima, and counts against
    /// `observed`, as the [`voxflip_shaders::cpu::tfce_exact`] port gives them.
    pub fn tfce_exact_batch(
        &mut self,
        g: &MaskGraph,
        maps: &[f32],
        params: &TfceParams,
        observed: Option<&[f32]>,
    ) -> Result<TfceBatch> {
        self.check_usable()?;
        self.exact_pipes().map_err(|e| self.fail(e))?;
        let v = g.len();
        if v == 0 || !maps.len().is_multiple_of(v) {
            return Err(EngineError::Invalid(format!("{} values are not whole maps of {v} voxels", maps.len())));
        }
        let graph = self.upload_graph(g);
        let table = exact_size_pow_table(v, params.e, params.h);
        let sizepow = self.storage_init("exact tfce sizepow", bytemuck::cast_slice(&table));
        let obs = observed.map(|o| self.storage_init("observed tfce", bytemuck::cast_slice(o)));
        let run =
            exact::ExactRun { graph: &graph, sizepow: &sizepow, h: params.h, observed: obs.as_ref(), read_tfce: true };
        let out = self.run_exact(BatchMaps::Host(maps), v, &run);
        let out = out.map_err(|e| self.fail(e))?;
        Ok(TfceBatch { tfce: out.tfce, max: out.max, counts: out.counts })
    }

    /// The TFCE of one map with the configured job's graph, tables and step (the same
    /// passes as its permutation maps get, so that the identity's TFCE equals it).
    pub fn tfce_map(&mut self, map: &[f32]) -> Result<Vec<f32>> {
        self.check_usable()?;
        let Some(t) = &self.tfce else {
            return Err(EngineError::Invalid("tfce_map without TFCE configured".into()));
        };
        let v = t.graph.v;
        if t.exact {
            let run = exact::ExactRun {
                graph: &t.graph,
                sizepow: &t.sizepow,
                h: t.params.h,
                observed: None,
                read_tfce: true,
            };
            let out = self.run_exact(BatchMaps::Host(map), v, &run);
            return Ok(out.map_err(|e| self.fail(e))?.tfce);
        }
        self.prepare(map, v)?;
        let t = self.tfce.as_ref().expect("checked above");
        let req = Request {
            maps: BatchMaps::Host(map),
            v,
            clusters: vec![],
            tfce: Some((&t.graph, t.dh, t.params.h, &t.sizepow)),
            observed: None,
            read_labels: false,
            read_tfce: true,
        };
        let out = self.run(&req);
        Ok(out.map_err(|e| self.fail(e))?.tfce)
    }

    // -----------------------------------------------------------------------------------

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(b) => Err(b.clone()),
            None => Ok(()),
        }
    }

    /// Remember a device failure: later calls fail fast (a caller's mistake leaves the
    /// reducer usable).
    fn fail(&mut self, e: EngineError) -> EngineError {
        if e.falls_back() && self.broken.is_none() {
            self.broken = Some(e.clone());
        }
        e
    }

    fn storage_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.device.storage_init(label, bytes, wgpu::BufferUsages::empty())
    }

    fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.storage_empty(label, bytes, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST)
    }

    fn upload_graph(&self, g: &MaskGraph) -> GraphBuf {
        let (rows, width) = g.padded_rows();
        GraphBuf { buf: self.storage_init("neighbours", bytemuck::cast_slice(rows)), width, v: g.len() }
    }

    /// Maps per sub-batch for maps of `v` voxels: the per-voxel accumulators (12 bytes per
    /// voxel-map) must fit one storage binding, indices 3 * i must fit u32, and a dispatch
    /// covers at most MAX_VOXEL_MAPS voxel-maps.
    fn maps_per_pass(&self, v: usize, nmaps: usize) -> Result<usize> {
        let binding = self.device.binding_limit() as usize;
        let mut nb = (binding / (12 * v)).min((u32::MAX as usize / 3) / v).min((MAX_VOXEL_MAPS / v).max(1));
        if let Some(m) = self.tuning.max_maps_per_pass {
            nb = nb.min(m.max(1));
        }
        if nb == 0 {
            return Err(EngineError::Unsupported(format!(
                "maps of {v} voxels do not fit one storage binding of {binding} bytes"
            )));
        }
        Ok(nb.min(nmaps.max(1)))
    }

    fn ensure_work(&mut self, nb: usize, v: usize) {
        if self.work.as_ref().is_some_and(|w| w.nb == nb && w.v == v) {
            return;
        }
        let n = (nb * v) as u64;
        self.work = Some(Work {
            nb,
            v,
            maps: self.storage("maps", n * 4),
            parent: self.storage("parent", n * 4),
            acc: self.storage("acc", n * 12),
            tfce: self.storage("tfce", n * 4),
            results: self.storage("results", (nb * RES_STRIDE * 4) as u64),
            list: self.storage("active list", (LIST_HEAD as u64 + n) * 4),
            args: self.device.wgpu().create_buffer(&wgpu::BufferDescriptor {
                label: Some("indirect args"),
                size: 32,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
                mapped_at_creation: false,
            }),
        });
    }

    /// Size the sub-batch buffers for maps of `v` voxels (before building a request).
    fn prepare(&mut self, maps: &[f32], v: usize) -> Result<()> {
        if v == 0 || !maps.len().is_multiple_of(v) {
            return Err(EngineError::Invalid(format!("{} values are not whole maps of {v} voxels", maps.len())));
        }
        self.prepare_n(maps.len() / v, v)
    }

    /// Size the sub-batch buffers for `nmaps` maps of `v` voxels.
    fn prepare_n(&mut self, nmaps: usize, v: usize) -> Result<()> {
        let nb = self.maps_per_pass(v, nmaps)?;
        self.ensure_work(nb, v);
        Ok(())
    }

    fn run(&self, req: &Request) -> Result<Output> {
        self.run_mode(req, MODE_INCLUSIVE)
    }

    /// Runs `req` over sub-batches. `mode` applies to the cluster passes (the test hook for
    /// labels uses MODE_TFCE too).
    fn run_mode(&self, req: &Request, mode: u32) -> Result<Output> {
        let v = req.v;
        let work =
            self.work.as_ref().filter(|w| w.v == v).ok_or_else(|| EngineError::Invalid("run before prepare".into()))?;
        let nmaps = req.maps.nmaps(v);
        let nb_max = work.nb;
        let counts = self.storage("counts", (v * 4) as u64);
        let mut out = Output::default();
        let align = self.device.limits().min_uniform_buffer_offset_alignment.max(64) as usize;
        let maxd = self
            .tuning
            .max_groups_per_dim
            .map_or(u32::MAX, |m| m.max(1))
            .min(self.device.limits().max_compute_workgroups_per_dimension) as usize;
        for m0 in (0..nmaps).step_by(nb_max) {
            let nb = nb_max.min(nmaps - m0);
            // The sub-batch's maps into the work buffer, and each map's largest value.
            let mass_thr = req.clusters.iter().find(|c| c.mass).map(|c| c.thr);
            let (sub_maxima, mass_scales): (Vec<f32>, Vec<MassScale>) = match req.maps {
                BatchMaps::Host(maps) => {
                    let sub = &maps[m0 * v..(m0 + nb) * v];
                    self.device.queue().write_buffer(&work.maps, 0, bytemuck::cast_slice(sub));
                    let scales = match mass_thr {
                        Some(thr) => sub.chunks(v).map(|m| MassScale::for_map(m, thr)).collect(),
                        None => Vec::new(),
                    };
                    (sub.chunks(v).map(positive_max).collect(), scales)
                }
                BatchMaps::Device { buf, maxima } => {
                    let mut enc = self.device.wgpu().create_command_encoder(&Default::default());
                    enc.copy_buffer_to_buffer(buf, (4 * m0 * v) as u64, &work.maps, 0, (4 * nb * v) as u64);
                    self.device.queue().submit(Some(enc.finish()));
                    let sub = &maxima[m0..m0 + nb];
                    // For thr > 0 (reduce_device refuses others) the active voxels' largest
                    // |value| is the map's maximum when that reaches thr: the same scale.
                    let scales = match mass_thr {
                        Some(thr) => {
                            sub.iter().map(|&m| MassScale::for_maxabs(if m >= thr { m } else { 0.0 })).collect()
                        }
                        None => Vec::new(),
                    };
                    (sub.to_vec(), scales)
                }
            };
            // Per map: maxima at their starting values, and the map's own mass fixed point (so
            // that a map's mass does not depend on the other maps of its batch).
            let mut init_results = vec![0u32; nb * RES_STRIDE];
            for (j, r) in init_results.chunks_mut(RES_STRIDE).enumerate() {
                r[RES_TFCE] = key_of(0.0);
                if mass_thr.is_some() {
                    let s = mass_scales[j];
                    r[RES_SCALE] = s.scale.to_bits();
                    r[RES_SCALE + 1] = s.lo_scale.to_bits();
                    r[RES_SCALE + 2] = s.hi_scale.to_bits();
                    out.scales.push(s);
                }
            }
            self.device.queue().write_buffer(&work.results, 0, bytemuck::cast_slice(&init_results));

            // Parameter slots: one per cluster pass; for TFCE set_args and one per level (top
            // down; or one for the zeroing `enter` when there is no level); one for the tail.
            let base = SpatialParams {
                nmaps: nb as u32,
                v: v as u32,
                sel: NO_LIST,
                maxd: maxd.min(u32::MAX as usize) as u32,
                ..Default::default()
            };
            let mut params: Vec<SpatialParams> = Vec::new();
            for c in &req.clusters {
                params.push(SpatialParams {
                    width: c.graph.width as u32,
                    mode,
                    thr: c.thr,
                    slot: c.slot as u32,
                    flags: if c.mass { FLAG_MASS } else { 0 },
                    ..base
                });
            }
            let n_cluster = params.len();
            // (h_k, h_k^H) of the levels that add anything (h_k^H = 0 adds exactly nothing; the
            // twin skips them too).
            let mut levels: Vec<(f32, f32)> = Vec::new();
            if let Some((g, dh, h_exp, _)) = req.tfce {
                let top = sub_maxima.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (hs, hpow) = level_table(&[top], dh, h_exp).map_err(|e| {
                    EngineError::Unsupported(format!(
                        "the GPU's TFCE passes take at most {} levels; dh = {} needs more for a maximum of {}",
                        e.limit, e.dh, e.max
                    ))
                })?;
                levels = hs.into_iter().zip(hpow).filter(|&(_, hp)| hp != 0.0).collect();
                let thr_of = |k: usize| levels.get(k).map_or(f32::INFINITY, |l| l.0);
                params.push(base); // set_args
                let n = levels.len();
                if n == 0 {
                    params.push(SpatialParams {
                        thr: f32::INFINITY,
                        next_thr: f32::INFINITY,
                        flags: FLAG_FIRST,
                        ..base
                    });
                }
                for (j, k) in (0..n).rev().enumerate() {
                    let (h, hp) = levels[k];
                    params.push(SpatialParams {
                        width: g.width as u32,
                        mode: MODE_TFCE,
                        thr: h,
                        hpow: hp,
                        cur: (j % 2) as u32,
                        next_thr: thr_of(k + 1),
                        next_hpow: levels.get(k + 1).map_or(0.0, |l| l.1),
                        sel: LIST_NEW,
                        flags: if j == 0 { FLAG_FIRST } else { FLAG_PREV },
                        ..base
                    });
                }
                self.tfce_work[1].fetch_add((nb * v * levels.len()) as u64, Ordering::Relaxed);
            }
            params.push(base);
            let mut bytes = vec![0u8; params.len() * align];
            for (i, p) in params.iter().enumerate() {
                bytes[i * align..i * align + 64].copy_from_slice(bytemuck::bytes_of(p));
            }
            let pbuf = self.device.uniform_init("spatial params", &bytes);
            // `args` is bound (read-write) only for set_args: the list passes read it as their
            // indirect arguments, which excludes binding it in the same dispatch.
            let bind = |nbrs: &wgpu::Buffer, sizepow: &wgpu::Buffer, args: &wgpu::Buffer| {
                let bufs: [&wgpu::Buffer; 11] = [
                    nbrs,
                    &work.maps,
                    &work.parent,
                    &work.acc,
                    &work.tfce,
                    sizepow,
                    &work.results,
                    req.observed.unwrap_or(&self.dummy),
                    &counts,
                    &work.list,
                    args,
                ];
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &pbuf,
                        offset: 0,
                        size: wgpu::BufferSize::new(64),
                    }),
                }];
                for (i, b) in bufs.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
                }
                self.device.wgpu().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("spatial"),
                    layout: &self.layout,
                    entries: &entries,
                })
            };
            let groups = |threads: usize| -> (u32, u32) {
                let wg = threads.div_ceil(WG as usize);
                if wg <= maxd {
                    (wg as u32, 1)
                } else {
                    (maxd as u32, wg.div_ceil(maxd) as u32)
                }
            };
            let all = groups(nb * v);
            let mut enc = self.device.wgpu().create_command_encoder(&Default::default());
            if req.tfce.is_some() {
                // The list counters (the list itself needs no clearing).
                enc.clear_buffer(&work.list, 0, Some(LIST_HEAD as u64 * 4));
            }
            let mut pending = 0usize;
            let dispatch = |enc: &mut wgpu::CommandEncoder,
                            pipe: &wgpu::ComputePipeline,
                            bg: &wgpu::BindGroup,
                            slot: usize,
                            (wx, wy): (u32, u32)| {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, bg, &[(slot * align) as u32]);
                pass.dispatch_workgroups(wx, wy, 1);
            };
            let indirect = |enc: &mut wgpu::CommandEncoder,
                            pipe: &wgpu::ComputePipeline,
                            bg: &wgpu::BindGroup,
                            slot: usize,
                            at: u64| {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, bg, &[(slot * align) as u32]);
                pass.dispatch_workgroups_indirect(&work.args, at);
            };
            let p = &self.pipes;
            for (ci, c) in req.clusters.iter().enumerate() {
                let bg = bind(&c.graph.buf, &self.dummy, &self.dummy_rw);
                for pipe in [&p.init, &p.hook, &p.compress, &p.measure, &p.cluster_max] {
                    dispatch(&mut enc, pipe, &bg, ci, all);
                }
                pending += 5;
            }
            let tail = params.len() - 1;
            if let Some((g, _, _, sizepow)) = req.tfce {
                let bg = bind(&g.buf, sizepow, &self.dummy_rw);
                let bg_args = bind(&g.buf, sizepow, &work.args);
                let set_args = n_cluster;
                if levels.is_empty() {
                    dispatch(&mut enc, &p.enter, &bg, set_args + 1, all);
                }
                for j in 0..levels.len() {
                    let slot = set_args + 1 + j;
                    dispatch(&mut enc, &p.enter, &bg, slot, all);
                    dispatch(&mut enc, &p.set_args, &bg_args, set_args, (1, 1));
                    indirect(&mut enc, &p.hook, &bg, slot, 0);
                    indirect(&mut enc, &p.compress_measure, &bg, slot, 16);
                    pending += 4;
                    if pending >= DISPATCHES_PER_SUBMIT {
                        // Nothing to wait for (no read-back between levels): just hand the
                        // device work early.
                        let full =
                            std::mem::replace(&mut enc, self.device.wgpu().create_command_encoder(&Default::default()));
                        self.device.queue().submit(Some(full.finish()));
                        pending = 0;
                    }
                }
                if !levels.is_empty() {
                    // The last level's terms (its slot: hpow, cur) and the maxima.
                    indirect(&mut enc, &p.accumulate, &bg, set_args + levels.len(), 16);
                }
                if req.observed.is_some() {
                    dispatch(&mut enc, &p.tfce_counts, &bg, tail, groups(v));
                }
            }
            self.device.queue().submit(Some(enc.finish()));
            self.device.poll("spatial kernels")?;
            if req.tfce.is_some() {
                let head = self.device.read_back(&work.list, 0, LIST_HEAD as u64 * 4, "TFCE list counters")?;
                let head: &[u32] = bytemuck::cast_slice(&head);
                let (lo, hi) = (head[L_WORK], head[L_WORK + 1]);
                let total = lo as u64 | (hi as u64) << 32;
                self.tfce_work[0].fetch_add(total, Ordering::Relaxed);
            }

            let res =
                self.device.read_back(&work.results, 0, (nb * RES_STRIDE * 4) as u64, "reading spatial results")?;
            out.results.extend_from_slice(bytemuck::cast_slice(&res));
            if req.read_labels {
                let n = (nb * v) as u64;
                out.parent.extend_from_slice(bytemuck::cast_slice(&self.device.read_back(
                    &work.parent,
                    0,
                    n * 4,
                    "labels",
                )?));
                out.acc.extend_from_slice(bytemuck::cast_slice(&self.device.read_back(
                    &work.acc,
                    0,
                    n * 12,
                    "sizes",
                )?));
            }
            if req.read_tfce {
                let n = (nb * v) as u64;
                out.tfce.extend_from_slice(bytemuck::cast_slice(&self.device.read_back(
                    &work.tfce,
                    0,
                    n * 4,
                    "TFCE maps",
                )?));
            }
        }
        if req.observed.is_some() && req.tfce.is_some() {
            out.counts =
                bytemuck::cast_slice(&self.device.read_back(&counts, 0, (v * 4) as u64, "TFCE counts")?).to_vec();
        } else if req.observed.is_some() {
            // No TFCE: every map is all zeros, as on the CPU.
            out.counts = vec![0; v];
        }
        Ok(out)
    }
}
