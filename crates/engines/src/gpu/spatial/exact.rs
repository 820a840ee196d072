//! Exact TFCE on the GPU (`--tfce-exact`): the shaders crate's `tfce_exact.wgsl`, one
//! invocation per map (the component tree's union-find sweep is sequential), the maps of a
//! sub-batch in parallel, then the exceedance counts one thread per voxel. Maps stay on the
//! device ([`BatchMaps::Device`] is copied device to device); only the per-map maxima, the
//! counts and (for the observed map) the TFCE maps come back.
//!
//! Numerics: within [`relative_bound`](voxflip_shaders::cpu::tfce_exact::relative_bound) of
//! the exact integral, as the CPU port ([`voxflip_shaders::cpu::tfce_exact`]); the CPU
//! reference (voxflip_stats' f64 component tree) is within its f32 rounding of it.
//!
//! Scratch: 32 bytes per voxel-map in two bindings of 16 (sort lanes / union-find, tree
//! nodes) and 8 KiB per map of radix histogram, so a sub-batch holds at most
//! binding / (16 V) maps.
use super::{BatchMaps, GpuSpatial, GraphBuf};
use crate::error::{EngineError, Result};
use voxflip_shaders::spatial::{tfce_exact_wgsl_source, TfceExactParams, EXACT_HIST_BINS, EXACT_RES_STRIDE, WG};
use voxflip_shaders::spatial::{EXACT_BUDGET, EXACT_PH_DONE, EXACT_S_PHASE};
/// State-machine dispatches per submission before the maps' phases are read back.
const STEPS_PER_ROUND: usize = 32;

const RES: usize = EXACT_RES_STRIDE as usize;
/// Voxel-maps per sub-batch at most (~40 bytes each with maps and TFCE).
const MAX_VOXEL_MAPS: usize = 1 << 23;
/// Storage buffers the exact kernels bind.
const STORAGE_BUFFERS: u32 = 10;

/// Bind group layout and pipelines of the exact TFCE kernels.
pub(super) struct ExactPipes {
    layout: wgpu::BindGroupLayout,
    step: wgpu::ComputePipeline,
    counts: wgpu::ComputePipeline,
}

/// What [`GpuSpatial::run_exact`] computes over a batch.
pub(super) struct ExactRun<'a> {
    pub graph: &'a GraphBuf,
    /// The two-float s^E / (H + 1) table (`cpu::tfce_exact::size_pow_table`).
    pub sizepow: &'a wgpu::Buffer,
    pub h: f32,
    pub observed: Option<&'a wgpu::Buffer>,
    pub read_tfce: bool,
}

/// Per map its TFCE maximum; the counts over the batch (with an observed map); the TFCE
/// maps (when asked for).
#[derive(Default)]
pub(super) struct ExactOut {
    pub max: Vec<f32>,
    pub counts: Vec<u32>,
    pub tfce: Vec<f32>,
}

impl ExactPipes {
    pub(super) fn new(device: &wgpu::Device) -> Result<ExactPipes> {
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        // nbrs, maps, sizepow, tfce, results, observed, counts, work, node, hist
        for (b, read_only) in [
            (1, true),
            (2, true),
            (3, true),
            (4, false),
            (5, false),
            (6, true),
            (7, false),
            (8, false),
            (9, false),
            (10, false),
        ] {
            entries.push(entry(b, wgpu::BufferBindingType::Storage { read_only }));
        }
        debug_assert_eq!(entries.len() as u32, STORAGE_BUFFERS + 1);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("tfce_exact"),
            entries: &entries,
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("tfce_exact"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("tfce_exact"),
            source: wgpu::ShaderSource::Wgsl(tfce_exact_wgsl_source().into()),
        });
        let pipe = |name: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(name),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        Ok(ExactPipes { step: pipe("exact_step"), counts: pipe("exact_counts"), layout })
    }
}

impl GpuSpatial {
    /// The exact kernels, compiled on first use.
    pub(super) fn exact_pipes(&mut self) -> Result<()> {
        if self.exact.is_none() {
            if self.device.limits().max_storage_buffers_per_shader_stage < STORAGE_BUFFERS {
                return Err(EngineError::Unsupported(format!(
                    "{}: fewer than {STORAGE_BUFFERS} storage buffers per stage for exact TFCE",
                    self.device.info().name
                )));
            }
            self.exact = Some(ExactPipes::new(self.device.wgpu())?);
            self.device.poll("compiling the exact TFCE kernels")?;
        }
        Ok(())
    }

    /// Maps per sub-batch of the exact kernels for maps of `v` voxels.
    fn exact_maps_per_pass(&self, v: usize, nmaps: usize) -> Result<usize> {
        let binding = self.device.binding_limit() as usize;
        let mut nb = (binding / (16 * v))
            .min(MAX_VOXEL_MAPS / v)
            .min(binding / (4 * EXACT_HIST_BINS as usize))
            .min(self.device.limits().max_compute_workgroups_per_dimension as usize);
        if let Some(m) = self.tuning.max_maps_per_pass {
            nb = nb.min(m.max(1));
        }
        if nb == 0 {
            return Err(EngineError::Unsupported(format!(
                "exact TFCE: maps of {v} voxels do not fit one storage binding of {binding} bytes"
            )));
        }
        Ok(nb.min(nmaps.max(1)))
    }

    /// Exact TFCE of every map of `maps` (see the module docs).
    pub(super) fn run_exact(&self, maps: BatchMaps, v: usize, run: &ExactRun) -> Result<ExactOut> {
        let pipes = self.exact.as_ref().ok_or_else(|| EngineError::Invalid("exact TFCE before configure".into()))?;
        if run.graph.v != v {
            return Err(EngineError::Invalid(format!("TFCE graph has {} voxels, maps have {v}", run.graph.v)));
        }
        let nmaps = maps.nmaps(v);
        let nb_max = self.exact_maps_per_pass(v, nmaps)?;
        let dev = &self.device;
        let rw = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let n = (nb_max * v) as u64;
        let maps_buf = dev.storage_empty("exact maps", n * 4, rw);
        let tfce = dev.storage_empty("exact tfce", n * 4, rw);
        let results = dev.storage_empty("exact results", (nb_max * RES * 4) as u64, rw);
        let work = dev.storage_empty("exact work", n * 16, rw);
        let node = dev.storage_empty("exact nodes", n * 16, rw);
        let hist = dev.storage_empty("exact histograms", (nb_max * EXACT_HIST_BINS as usize * 4) as u64, rw);
        let counts = dev.storage_empty("exact counts", (v * 4) as u64, rw);
        let mut enc = dev.encoder();
        enc.clear_buffer(&counts, 0, None);
        dev.submit(enc);
        let maxd = self
            .tuning
            .max_groups_per_dim
            .map_or(u32::MAX, |m| m.max(1))
            .min(dev.limits().max_compute_workgroups_per_dimension) as usize;
        let wg = v.div_ceil(WG as usize);
        let voxel_groups = if wg <= maxd { (wg as u32, 1) } else { (maxd as u32, wg.div_ceil(maxd) as u32) };

        let mut out = ExactOut::default();
        for m0 in (0..nmaps).step_by(nb_max) {
            let nb = nb_max.min(nmaps - m0);
            match maps {
                BatchMaps::Host(all) => {
                    dev.queue().write_buffer(&maps_buf, 0, bytemuck::cast_slice(&all[m0 * v..(m0 + nb) * v]))
                }
                BatchMaps::Device { buf, .. } => {
                    let mut enc = dev.encoder();
                    enc.copy_buffer_to_buffer(buf, (4 * m0 * v) as u64, &maps_buf, 0, (4 * nb * v) as u64);
                    dev.submit(enc);
                }
            }
            let params = TfceExactParams::new(v, run.graph.width, nb, run.h);
            let pbuf = dev.uniform_init("exact params", bytemuck::bytes_of(&params));
            let bufs: [&wgpu::Buffer; 11] = [
                &pbuf,
                &run.graph.buf,
                &maps_buf,
                run.sizepow,
                &tfce,
                &results,
                run.observed.unwrap_or(&self.dummy),
                &counts,
                &work,
                &node,
                &hist,
            ];
            let entries: Vec<wgpu::BindGroupEntry> = bufs
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
                .collect();
            let bg = dev.wgpu().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("tfce_exact"),
                layout: &pipes.layout,
                entries: &entries,
            });
            // Each map's state machine from its start; dispatches until every map is done.
            // A map needs about (3 V + 3 (2 V + 4096) + V + 40 V) / budget dispatches at
            // most; the bound below is far above that and only stops a defect looping.
            let mut enc = dev.encoder();
            enc.clear_buffer(&results, 0, None);
            let max_steps = 64 + (60 * v + 3 * 4096).div_ceil(EXACT_BUDGET as usize / 2);
            let mut steps = 0usize;
            let bytes = loop {
                for _ in 0..STEPS_PER_ROUND {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipes.step);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.dispatch_workgroups(nb as u32, 1, 1);
                }
                steps += STEPS_PER_ROUND;
                let state = dev.submit_and_read(enc, &[(&results, (nb * RES * 4) as u64)], "exact TFCE")?;
                let words: &[u32] = bytemuck::cast_slice(&state);
                if words.chunks(RES).all(|r| r[EXACT_S_PHASE as usize] == EXACT_PH_DONE) {
                    break state;
                }
                if steps > max_steps {
                    return Err(EngineError::Invalid(format!("exact TFCE did not finish in {steps} dispatches")));
                }
                enc = dev.encoder();
            };
            let mut enc = dev.encoder();
            if run.observed.is_some() {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipes.counts);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(voxel_groups.0, voxel_groups.1, 1);
            }
            let tf = if run.read_tfce {
                dev.submit_and_read(enc, &[(&tfce, (nb * v * 4) as u64)], "exact TFCE maps")?
            } else {
                dev.submit(enc);
                Vec::new()
            };
            let words: &[u32] = bytemuck::cast_slice(&bytes);
            out.max.extend(words[..nb * RES].chunks(RES).map(|r| f32::from_bits(r[0])));
            out.tfce.extend(tf.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
        if run.observed.is_some() {
            out.counts =
                bytemuck::cast_slice(&dev.read_back(&counts, 0, (v * 4) as u64, "exact TFCE counts")?).to_vec();
        }
        Ok(out)
    }
}
