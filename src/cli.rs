//! The command line: randomise's flags for the general GLM (so a randomise script switches
//! by changing the program name), plus subcommands for the group-by-time study, the
//! simulator, the built-in example, the device list and the benchmark.
use crate::commands;
use crate::error::{Error, Result};
use crate::options::AnalysisOptions;
use crate::options::{Checkpoints, Distribution, ReportOptions};
use crate::permutations::Inquiry;
use crate::state::{Merged, Shard};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use voxflip_engines::{Backend, EngineOptions, GlmKernel, GpuOptions, Product, SpatialPlacement};
use voxflip_stats::spatial::{Connectivity, SpatialOptions, TfceEdge, TfceOptions, TfceParams};
use voxflip_stats::{PScale, PermKind};

#[derive(Parser, Debug)]
#[command(
    name = "voxflip",
    version,
    // `-V` is randomise's verbose flag (accepted below); the version is `--version` only.
    disable_version_flag = true,
    about = "Whole-brain permutation inference (max-T, cluster, TFCE) on the GPU and CPU; randomise-compatible",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  voxflip example                      simulate the two-group, two-time study and analyse it\n  voxflip -i all.nii.gz -o out -d design.mat -t design.con -m mask.nii.gz -n 5000 -x\n  voxflip -i diffs.nii.gz -o out -1 -m mask.nii.gz -x          (one-sample, sign flips)\n  voxflip interaction --pre pre.nii.gz --post post.nii.gz --participants participants.tsv --group-column group -o out"
)]
pub struct Cli {
    /// Print the version.
    #[arg(long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub glm: GlmArgs,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Group-by-time interaction: post - pre per subject, two groups, sign flips.
    Interaction(InteractionArgs),
    /// Write a simulated two-group, two-time dataset with known effects.
    Simulate(SimulateArgs),
    /// Simulate the driving study and analyse it end to end (the README's first command).
    Example(ExampleArgs),
    /// List the GPU adapters wgpu sees.
    Devices,
    /// Time the CPU and GPU engines on the simulated 2 mm study in one run (ratios, GFLOP/s).
    Bench(BenchArgs),
    /// Write a sharded run's outputs from its shard files (--shard K/N), exactly as one run.
    Merge(MergeArgs),
    /// Rebuild a finished run's HTML report from its outputs and sidecar: voxflip report PREFIX.
    Report(ReportCommandArgs),
    /// Run an analysis as a SLURM job array of shards and a merge job: voxflip slurm [OPTIONS] -- ARGS.
    Slurm(SlurmArgs),
}

/// `voxflip report PREFIX`: the report of a finished run, from its outputs.
#[derive(Args, Debug, Clone)]
pub struct ReportCommandArgs {
    /// The run's output prefix (its {prefix}_voxflip.json and maps).
    pub prefix: String,
    /// Where to write the report (default: {prefix}_report.html).
    #[arg(short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The background image (default: the run's).
    #[arg(long, value_name = "IMAGE")]
    pub background: Option<PathBuf>,
    /// Atlases for the labels (default: the run's); see the analysis's --atlas.
    #[arg(long, value_name = "ATLAS")]
    pub atlas: Vec<String>,
    /// No messages.
    #[arg(long = "quiet")]
    pub quiet: bool,
}

/// A run as SLURM jobs: the shards as one job array and the merge after them.
#[derive(Args, Debug, Clone)]
pub struct SlurmArgs {
    /// Number of shards (default: one per 1,000 permutations, at most 64).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Submit the jobs with sbatch (otherwise write the scripts under {out}_slurm/).
    #[arg(long)]
    pub submit: bool,
    /// Print the scripts; write and submit nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Submit only the shards whose files are missing, and the merge.
    #[arg(long = "rerun-missing")]
    pub rerun_missing: bool,
    /// sbatch --partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// sbatch --time (per job).
    #[arg(long)]
    pub time: Option<String>,
    /// sbatch --mem (per job).
    #[arg(long)]
    pub mem: Option<String>,
    /// sbatch --cpus-per-task (shard jobs).
    #[arg(long = "cpus-per-task")]
    pub cpus_per_task: Option<u32>,
    /// sbatch --gres for the shard jobs, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Where the jobs' stdout and stderr go (default {out}_slurm/logs).
    #[arg(long = "log-dir")]
    pub log_dir: Option<PathBuf>,
    /// The voxflip arguments of the run, after --.
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

/// Write the outputs of a run split with --shard K/N from its shard files (found as
/// PREFIX_shard-K-of-N, or named), exactly as a single run writes them; or rewrite a run's
/// outputs from its --keep-null-state file with other output options.
#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The output prefix the shards ran with (-o).
    pub prefix: String,
    /// Shard files (default: every PREFIX_shard-K-of-N).
    pub shards: Vec<PathBuf>,
    /// Write the outputs under this prefix instead of PREFIX.
    #[arg(short = 'o', value_name = "PREFIX")]
    pub out: Option<String>,
    /// Also write voxelwise FWE-corrected p maps.
    #[arg(short = 'x')]
    pub vox_corrp: bool,
    /// Also write uncorrected p maps.
    #[arg(long = "uncorrp")]
    pub uncorrp: bool,
    /// Write -log10(p) instead of 1-p.
    #[arg(long)]
    pub logp: bool,
    /// Also write the null distributions as text.
    #[arg(short = 'N', long = "save-null")]
    pub save_null: bool,
    /// Keep the merged state as PREFIX_shard-1-of-1.
    #[arg(long = "keep-null-state")]
    pub keep_null_state: bool,
    /// No messages but warnings and errors.
    #[arg(long = "quiet")]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Sign flips for the voxelwise timing.
    #[arg(short = 'n', default_value_t = 5000)]
    pub n_perm: usize,
    /// Also time TFCE (randomise -T defaults) and its ratio to the voxelwise run.
    #[arg(short = 'T', long = "tfce")]
    pub tfce: bool,
    /// Sign flips for the TFCE timing (default: the same as -n).
    #[arg(long)]
    pub tfce_perms: Option<usize>,
    /// Engines: auto (CPU, plus a hardware GPU if present), gpu (CPU plus any GPU adapter,
    /// software included), or cpu.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Pick the GPU adapter whose name contains this.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Also run `voxflip example` (with -T when --tfce) in a scratch folder and report the
    /// split of its wall time.
    #[arg(long = "end-to-end")]
    pub end_to_end: bool,
    /// Also time 1,000 sign flips against N (58, 500, 5,000) and V (4 mm and 2 mm brains),
    /// each engine and product (minutes).
    #[arg(long)]
    pub scaling: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// Options shared by every analysis.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Output prefix: maps are written as {prefix}_tstat1.nii.gz etc.
    #[arg(short = 'o', value_name = "PREFIX")]
    pub out: Option<String>,
    /// Mask image (voxels > 0 are analysed); default: every voxel that varies across images.
    #[arg(short = 'm', value_name = "MASK")]
    pub mask: Option<PathBuf>,
    /// Keep voxels of -m that are constant across all images (randomise --norcmask); by
    /// default they are left out of the analysis and hold 0 in every output map. Kept, their
    /// statistic is 0 in every permutation (randomise: t = 0 where the variance is 0).
    #[arg(long = "norcmask")]
    pub keep_constant: bool,
    /// Number of permutations (0 = all); exhaustive when there are at most this many.
    #[arg(short = 'n', default_value_t = 5000)]
    pub n_perm: usize,
    /// Write voxelwise FWE-corrected p maps (_vox_corrp_).
    #[arg(short = 'x')]
    pub vox_corrp: bool,
    /// Write uncorrected p maps (_vox_p_).
    #[arg(long = "uncorrp")]
    pub uncorrp: bool,
    /// Seed of the permutation stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write -log10(p) instead of randomise's 1-p.
    #[arg(long)]
    pub logp: bool,
    /// Write each contrast's maximum-statistic null distribution as text (randomise -N).
    #[arg(short = 'N', long = "save-null")]
    pub save_null: bool,
    /// Also write the observed cluster-size and cluster-mass maps (_clustere_tstat1,
    /// _clusterm_tstat1) with -c/-C/-F/-S (the statistic and TFCE maps are always written).
    #[arg(short = 'R')]
    pub raw_stats: bool,
    /// Accepted for randomise scripts (diagnostic messages are on unless --quiet).
    #[arg(short = 'V', hide = true)]
    pub verbose: bool,
    /// No progress bar or messages (errors are still printed), as randomise --quiet.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Print how many distinct permutations each contrast has, as randomise -q does, and
    /// exit without analysing or writing anything.
    #[arg(short = 'q', conflicts_with = "parallel_info")]
    pub count_permutations: bool,
    /// Print what randomise's parallel mode needs (permutations, contrasts, output prefix,
    /// permutations per job), as randomise -Q does, and exit.
    #[arg(short = 'Q')]
    pub parallel_info: bool,
    /// Also write each contrast's permutation vectors, one line per permutation
    /// ({prefix}_perm_tstat1.txt, randomise -P).
    #[arg(short = 'P')]
    pub perm_vectors: bool,
    /// Engine: auto (hardware GPU if present, else CPU), gpu, or cpu.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// GPU adapter: one whose name (or "name (backend)") contains this, or #K, the K-th of
    /// `voxflip devices`; `all`: every adapter the backend allows (with --backend gpu
    /// software ones too), sharing the permutations; A,B: several, one per name.
    #[arg(long, value_name = "NAME|all|A,B")]
    pub adapter: Option<String>,
    /// The CPU engine runs permutations too, beside the GPU adapters (an equal share, fixed
    /// in advance so that runs repeat exactly; its statistics may differ from the GPU's in
    /// the last bit).
    #[arg(long = "with-cpu")]
    pub with_cpu: bool,
    /// How the engines form the coefficients of the permutations: auto (table-driven where
    /// the set allows it), gemm (the matrix product) or table.
    #[arg(long, value_enum, default_value_t = ProductArg::Auto)]
    pub product: ProductArg,
    /// Run a t contrast and its mirror (the next contrast with the weights negated, e.g.
    /// [1 -1] then [-1 1]) each on its own product instead of sharing one (the outputs are
    /// the same; sharing saves the second product, on the CPU engine).
    #[arg(long = "no-shared-contrasts")]
    pub no_shared_contrasts: bool,
    #[command(flatten)]
    pub spatial: SpatialArgs,
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(flatten)]
    pub distribution: DistributionArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

/// The HTML report a run ends with (`{prefix}_report.html`), and what it shows.
#[derive(Args, Debug, Clone, Default)]
pub struct ReportArgs {
    /// Write no report.
    #[arg(long = "no-report")]
    pub no_report: bool,
    /// The report's background image (e.g. an MNI152 T1); default: the mean of the images.
    #[arg(long, value_name = "IMAGE")]
    pub background: Option<PathBuf>,
    /// Anatomical labels for the cluster tables and the report (repeatable): an FSL atlas
    /// XML, an atlas name under $FSLDIR/data/atlases, or a label image with its table
    /// beside it (same stem + .tsv/.csv/.txt/_LUT.txt) or given as IMAGE,TABLE. Default:
    /// Harvard-Oxford cortical and subcortical when FSLDIR is set.
    #[arg(long, value_name = "ATLAS")]
    pub atlas: Vec<String>,
}

impl ReportArgs {
    pub fn options(&self) -> ReportOptions {
        ReportOptions { enabled: !self.no_report, background: self.background.clone(), atlases: self.atlas.clone() }
    }
}

/// Splitting a run over jobs and machines, and surviving interruptions.
#[derive(Args, Debug, Clone)]
pub struct DistributionArgs {
    /// Run slice K of N of the permutation set and write its state to {prefix}_shard-K-of-N
    /// (no maps); `voxflip merge PREFIX` then writes the outputs of the whole run.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Continue an interrupted run (same command) from its checkpoint, {prefix}_checkpoint
    /// (or {prefix}_shard-K-of-N.checkpoint); outputs equal an uninterrupted run's.
    #[arg(long)]
    pub resume: bool,
    /// Seconds between checkpoints at least (0: after every few batches).
    #[arg(long = "checkpoint-seconds", value_name = "S", default_value_t = 60.0)]
    pub checkpoint_seconds: f64,
    /// Write no checkpoint.
    #[arg(long = "no-checkpoint")]
    pub no_checkpoint: bool,
    /// Tests: permutations between the points where a checkpoint may be written.
    #[arg(long = "checkpoint-permutations", hide = true)]
    pub checkpoint_permutations: Option<usize>,
    /// Also keep the run's permutation state as {prefix}_shard-1-of-1 (V x 8 bytes per
    /// contrast, x 2 more with TFCE, plus 4 bytes per permutation per null), so that
    /// `voxflip merge PREFIX` can rewrite the outputs with other output options.
    #[arg(long = "keep-null-state")]
    pub keep_null_state: bool,
    /// Set by `voxflip merge`: the merged shards instead of permutations.
    #[arg(skip)]
    pub merged: Option<Arc<Merged>>,
}

/// How the GPU engine runs: where its maps' spatial statistics go, and switches for tests
/// and benchmarks (hidden from --help).
#[derive(Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Where TFCE and cluster statistics of the GPU engine's maps run: auto (on a hardware
    /// GPU; on the CPU after a software adapter), gpu (on the GPU engine's adapter, software
    /// included), or cpu.
    #[arg(long = "spatial-backend", value_enum, default_value_t = SpatialArg::Auto)]
    pub spatial: SpatialArg,
    /// glm_stat kernel: direct, tiles, wide or wide128 (default: the fastest the adapter allows).
    #[arg(long = "glm-kernel", hide = true, value_parser = parse_kernel)]
    pub kernel: Option<GlmKernel>,
    /// Compile the Wide kernels without wgpu's runtime checks (benchmarks).
    #[arg(long = "gpu-unchecked", hide = true)]
    pub unchecked: bool,
    /// Time the glm_stat passes with GPU timestamps (benchmarks).
    #[arg(long = "gpu-timestamps", hide = true)]
    pub timestamps: bool,
    /// Tests: the GPU device fails (as if lost) at this batch, counting from 1.
    #[arg(long = "gpu-fail-at-batch", hide = true)]
    pub fail_at_batch: Option<usize>,
}

fn parse_kernel(s: &str) -> std::result::Result<GlmKernel, String> {
    GlmKernel::parse(s).ok_or_else(|| format!("'{s}': expected direct, tiles, wide or wide128"))
}

impl GpuArgs {
    pub fn options(&self, adapter: Option<String>) -> GpuOptions {
        GpuOptions {
            adapter,
            kernel: self.kernel,
            unchecked: self.unchecked,
            timestamps: self.timestamps,
            spatial: self.spatial.into(),
            tuning: Default::default(),
            fail_at_batch: self.fail_at_batch,
        }
    }
}

/// `--tfce-edge`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TfceEdgeArg {
    /// randomise's rule: the grid's outermost layer gets TFCE 0 and joins no cluster.
    #[default]
    Skip,
    /// Every in-mask voxel is enhanced.
    Include,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// A hardware GPU when one exists, else the CPU engine.
    Auto,
    /// The GPU engine (a software adapter such as lavapipe is accepted when asked for).
    Gpu,
    /// The multithreaded CPU engine.
    Cpu,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Gpu => Backend::Gpu,
            BackendArg::Cpu => Backend::Cpu,
        }
    }
}

/// `--product`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProductArg {
    /// The table-driven product where the permutation set allows it (sign flips;
    /// relabelings of designs with at most four distinct rows), else the matrix product.
    #[default]
    Auto,
    /// Always the matrix product (the general path and the reference).
    Gemm,
    /// The table-driven product (a set it cannot serve runs the matrix product).
    Table,
}

impl From<ProductArg> for Product {
    fn from(p: ProductArg) -> Product {
        match p {
            ProductArg::Auto => Product::Auto,
            ProductArg::Gemm => Product::Gemm,
            ProductArg::Table => Product::Table,
        }
    }
}

/// `--spatial-backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SpatialArg {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

impl From<SpatialArg> for SpatialPlacement {
    fn from(s: SpatialArg) -> SpatialPlacement {
        match s {
            SpatialArg::Auto => SpatialPlacement::Auto,
            SpatialArg::Gpu => SpatialPlacement::Gpu,
            SpatialArg::Cpu => SpatialPlacement::Cpu,
        }
    }
}

/// randomise's spatial inference flags.
#[derive(Args, Debug, Clone, Default)]
pub struct SpatialArgs {
    /// TFCE (H=2, E=0.5, 6-connectivity by default): _tfce_tstat, _tfce_corrp_tstat.
    #[arg(short = 'T')]
    pub tfce: bool,
    /// TFCE for 2D/surface-like data: H=2, E=1, 26-connectivity.
    #[arg(long = "T2")]
    pub tfce2: bool,
    /// TFCE height exponent H.
    #[arg(long = "tfce_H")]
    pub tfce_h: Option<f32>,
    /// TFCE extent exponent E.
    #[arg(long = "tfce_E")]
    pub tfce_e: Option<f32>,
    /// TFCE connectivity: 6, 18 or 26.
    #[arg(long = "tfce_C")]
    pub tfce_c: Option<u32>,
    /// TFCE step dh (default: max of the observed map / 100, as randomise).
    #[arg(long = "tfce_D")]
    pub tfce_d: Option<f32>,
    /// Exact TFCE integral (component tree) instead of randomise's stepwise sum.
    #[arg(long = "tfce-exact")]
    pub tfce_exact: bool,
    /// TFCE at the grid's outermost voxel layer: skip (randomise: TFCE 0 there, and those
    /// voxels join no cluster) or include (enhance every in-mask voxel).
    #[arg(long = "tfce-edge", value_enum, default_value_t = TfceEdgeArg::Skip)]
    pub tfce_edge: TfceEdgeArg,
    /// Cluster-extent inference for t maps at this cluster-forming threshold (_clustere_corrp_).
    #[arg(short = 'c', value_name = "THR")]
    pub t_extent: Option<f32>,
    /// Cluster-mass inference for t maps at this threshold (_clusterm_corrp_).
    #[arg(short = 'C', value_name = "THR")]
    pub t_mass: Option<f32>,
    /// Cluster-extent inference for F maps at this threshold.
    #[arg(short = 'F', value_name = "THR")]
    pub f_extent: Option<f32>,
    /// Cluster-mass inference for F maps at this threshold.
    #[arg(short = 'S', value_name = "THR")]
    pub f_mass: Option<f32>,
    /// Connectivity of the cluster-forming step: 6, 18 or 26 (default 26, as randomise).
    #[arg(long = "cluster-connectivity")]
    pub cluster_conn: Option<u32>,
}

impl SpatialArgs {
    pub fn options(&self) -> Result<SpatialOptions> {
        let conn = |c: u32, flag: &str| {
            Connectivity::from_count(c)
                .ok_or_else(|| Error::usage(format!("{flag} {c}: connectivity must be 6, 18 or 26")))
        };
        let tfce = if self.tfce || self.tfce2 || self.tfce_exact {
            let mut params = if self.tfce2 { TfceParams::t2() } else { TfceParams::default() };
            if let Some(h) = self.tfce_h {
                params.h = h;
            }
            if let Some(e) = self.tfce_e {
                params.e = e;
            }
            if let Some(c) = self.tfce_c {
                params.conn = conn(c, "--tfce_C")?;
            }
            if let Some(d) = self.tfce_d {
                if !(d > 0.0 && d.is_finite()) {
                    return Err(Error::usage(format!("--tfce_D {d}: the step must be positive")));
                }
            }
            if !(params.h >= 0.0 && params.e >= 0.0) {
                return Err(Error::usage("--tfce_H and --tfce_E must be >= 0"));
            }
            Some(TfceOptions { params, exact: self.tfce_exact, step: self.tfce_d })
        } else {
            None
        };
        Ok(SpatialOptions {
            tfce,
            tfce_edge: match self.tfce_edge {
                TfceEdgeArg::Skip => TfceEdge::Skip,
                TfceEdgeArg::Include => TfceEdge::Include,
            },
            t_extent: self.t_extent,
            t_mass: self.t_mass,
            f_extent: self.f_extent,
            f_mass: self.f_mass,
            cluster_conn: self.cluster_conn.map(|c| conn(c, "--cluster-connectivity")).transpose()?,
        })
    }
}

/// randomise-style general GLM.
#[derive(Args, Debug, Clone)]
pub struct GlmArgs {
    /// 4D input image (one volume per subject/image).
    #[arg(short = 'i', value_name = "4D")]
    pub input: Option<PathBuf>,
    /// Design matrix (FSL VEST design.mat).
    #[arg(short = 'd', value_name = "design.mat")]
    pub design: Option<PathBuf>,
    /// t contrasts (FSL VEST design.con).
    #[arg(short = 't', value_name = "design.con")]
    pub contrasts: Option<PathBuf>,
    /// F tests (FSL VEST design.fts).
    #[arg(short = 'f', value_name = "design.fts")]
    pub fts: Option<PathBuf>,
    /// One-sample test by sign flipping (randomise -1); without -d the design is a column of ones.
    #[arg(short = '1')]
    pub one_sample: bool,
    /// Demean data and design (adds the mean as nuisance; constant columns are removed).
    #[arg(short = 'D')]
    pub demean: bool,
    /// Override what is exchanged: flip (sign flips), permute (rows), both.
    #[arg(long = "perm-kind", value_enum)]
    pub perm_kind: Option<PermKindArg>,
    /// Variance smoothing of t contrasts, std in mm (randomise -v): each permutation's
    /// residual variance is smoothed within the mask and t becomes the pseudo-t (written as
    /// _tstat); F-tests are not smoothed, as in randomise.
    #[arg(short = 'v', value_name = "STD")]
    pub variance_smoothing: Option<String>,
    /// Voxelwise regressors (randomise --vxl): the design columns, numbered from 1 and
    /// separated by commas, that each voxel replaces with its values from the --vxf images.
    #[arg(long = "vxl", value_name = "COLS")]
    pub voxelwise_evs: Option<String>,
    /// The 4D images of the voxelwise regressors (randomise --vxf), one volume per design
    /// row, separated by commas, in the order of --vxl.
    #[arg(long = "vxf", value_name = "FILES")]
    pub voxelwise_ev_files: Option<String>,
    /// F-tests only (randomise --fonly): the t contrasts only define the F-tests.
    #[arg(long = "fonly")]
    pub f_only: bool,
    /// Exchangeability blocks (randomise -e): one integer per volume (VEST design.grp); rows
    /// are exchanged only within their block.
    #[arg(short = 'e', value_name = "design.grp")]
    pub blocks: Option<PathBuf>,
    /// Exchange whole blocks instead (randomise --permuteBlocks): blocks of equal size are
    /// reordered as units and sign-flipped as units.
    #[arg(long = "permuteBlocks")]
    pub permute_blocks: bool,
    /// Confound method (randomise -U): 0 Kennedy (R_Z Y on R_Z X), 1 Freedman-Lane (the
    /// default), 2 Manly (Y on X|Z), 3 ter Braak (the full model's residuals on X|Z).
    #[arg(short = 'U', value_name = "0-3")]
    pub confound: Option<u8>,
    /// Also write the unpermuted GLM's maps of the t contrasts (randomise --glm_output):
    /// _glm_pe, _glm_cope, _glm_varcope, _glm_sigmasqr.
    #[arg(long = "glm_output")]
    pub glm_output: bool,
    /// Also write every permutation's statistic map, and its TFCE and cluster maps with
    /// -T/-c/-C (randomise --permout: {prefix}_vox_perm00001_tstat1 ...); refused above
    /// 10,000 maps or 4 GiB.
    #[arg(long = "permout")]
    pub permout: bool,
    /// randomise's FEAT-style output names: refused with a clear message (not implemented).
    #[arg(long = "film", hide = true)]
    pub film: bool,
    /// Only contrast N (randomise --skipTo): F-tests are numbered first, then t contrasts
    /// (with 2 F-tests, 3 is tstat1); 0: all.
    #[arg(long = "skipTo", value_name = "N", default_value_t = 0)]
    pub skip_to: usize,
    /// The alternative design whose identical rows decide which relabelings are distinct
    /// (randomise --effective_design; VEST, one row per volume).
    #[arg(long = "effective_design", value_name = "design2.mat")]
    pub effective_design: Option<PathBuf>,
    /// Rows where a contrast's effective regressor is zero (uninformative) are not
    /// permuted (randomise --detectNull).
    #[arg(long = "detectNull")]
    pub detect_null: bool,
    /// randomise's cluster normalisation: refused with a clear message (not implemented).
    #[arg(long = "twopass", hide = true)]
    pub twopass: bool,
    /// randomise's beta multivariate mode: refused with a clear message (not implemented).
    #[arg(long = "multi", value_name = "DIM", hide = true)]
    pub multi: Option<String>,
    /// Accepted for randomise scripts: voxflip's messages already report its choices.
    #[arg(long = "debug", hide = true)]
    pub debug: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PermKindArg {
    Flip,
    Permute,
    Both,
}

impl From<PermKindArg> for PermKind {
    fn from(p: PermKindArg) -> PermKind {
        match p {
            PermKindArg::Flip => PermKind::SignFlip,
            PermKindArg::Permute => PermKind::Permute,
            PermKindArg::Both => PermKind::Both,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct InteractionArgs {
    /// Pre-training maps: a 4D file (volumes in participants.tsv order) or a pattern with
    /// {participant_id}, e.g. 'maps/{participant_id}_ses-pre.nii.gz'.
    #[arg(long)]
    pub pre: String,
    /// Post-training maps, same form and subject order as --pre.
    #[arg(long)]
    pub post: String,
    /// BIDS participants.tsv with participant_id and the group column.
    #[arg(long)]
    pub participants: PathBuf,
    /// Name of the group column in participants.tsv.
    #[arg(long = "group-column", default_value = "group")]
    pub group_column: String,
    /// The two groups, first = "A" in A > B (default: order of first appearance).
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Exchange group labels instead of flipping signs.
    #[arg(long)]
    pub permute: bool,
    /// Variance smoothing of the t contrasts, std in mm (as randomise -v; see `voxflip glm`).
    #[arg(short = 'v', value_name = "STD")]
    pub variance_smoothing: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// 2mm (91x109x91 MNI grid, ~228,000 voxels) or small (4 mm, for quick runs).
    #[arg(long, default_value = "2mm")]
    pub grid: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Subjects in the training group.
    #[arg(long = "n-a", default_value_t = 28)]
    pub n_a: usize,
    /// Subjects in the control group.
    #[arg(long = "n-b", default_value_t = 30)]
    pub n_b: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ExampleArgs {
    /// Folder for the simulated data and the results.
    #[arg(long, default_value = "voxflip-example")]
    pub dir: PathBuf,
    /// 2mm or small.
    #[arg(long, default_value = "2mm")]
    pub grid: String,
    /// Permutations.
    #[arg(short = 'n', default_value_t = 1000)]
    pub n_perm: usize,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// No progress bar or messages (errors are still printed).
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Also run TFCE (randomise -T).
    #[arg(short = 'T')]
    pub tfce: bool,
}

/// Parse, validate and run; an error is printed as one line and exits with 2.
pub fn main(args: Vec<String>) -> ExitCode {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors (exit 0); parse errors exit with 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    crate::logger::init(cli_quiet(&cli));
    match run(cli, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxflip: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Whether messages are off (--quiet, or -Q as in randomise), for the logger.
fn cli_quiet(cli: &Cli) -> bool {
    match &cli.command {
        Some(Command::Interaction(a)) => a.common.quiet || a.common.parallel_info,
        Some(Command::Example(a)) => a.quiet,
        Some(Command::Merge(a)) => a.quiet,
        Some(Command::Report(a)) => a.quiet,
        Some(_) => false,
        None => cli.glm.common.quiet || cli.glm.common.parallel_info,
    }
}

fn run(cli: Cli, args: &[String]) -> Result<()> {
    match cli.command {
        Some(Command::Interaction(a)) => commands::interaction::run(&a, args),
        Some(Command::Simulate(a)) => commands::simulate::run(&a),
        Some(Command::Example(a)) => commands::example::run(&a, args),
        Some(Command::Devices) => {
            print!("{}", voxflip_engines::gpu::describe_adapters());
            Ok(())
        }
        Some(Command::Bench(a)) => commands::bench::run(&a),
        Some(Command::Merge(a)) => commands::merge::run(&a),
        Some(Command::Report(a)) => commands::report::run(&a),
        Some(Command::Slurm(a)) => commands::slurm::run(&a),
        None => commands::glm::run(&cli.glm, args),
    }
}

impl CommonArgs {
    /// The engines these flags ask for.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            backend: self.backend.into(),
            gpu: self.gpu.options(self.adapter.clone()),
            with_cpu: self.with_cpu,
            product: self.product.into(),
        }
    }

    /// Refuses engine flags that contradict each other: several engines need a GPU backend.
    fn check_engines(&self) -> Result<()> {
        if self.backend != BackendArg::Cpu {
            return Ok(());
        }
        if let Some(a) =
            self.adapter.as_deref().filter(|a| voxflip_engines::gpu::AdapterSpec::parse(Some(a)).is_multi())
        {
            return Err(Error::usage(format!(
                "--adapter {a} with --backend cpu: several adapters need --backend gpu or auto"
            )));
        }
        if self.with_cpu {
            return Err(Error::usage(
                "--with-cpu with --backend cpu: the CPU engine already runs alone; give --backend gpu or auto",
            ));
        }
        Ok(())
    }

    /// The analysis options of these flags, with the permutation kind the command chose.
    pub fn analysis_options(&self, kind: PermKind, reason: String, args: &[String]) -> Result<AnalysisOptions> {
        self.check_engines()?;
        Ok(AnalysisOptions {
            blocks: None,
            effective_design: None,
            detect_null: false,
            perm_vectors: self.perm_vectors,
            flip_constant_contrasts: false,
            spatial: self.spatial.options()?,
            n_perm: self.n_perm,
            seed: self.seed,
            perm_kind: kind,
            perm_reason: reason,
            vox_corrp: self.vox_corrp,
            uncorrp: self.uncorrp,
            scale: if self.logp { PScale::NegLog10 } else { PScale::OneMinusP },
            save_null: self.save_null,
            quiet: self.quiet,
            engine: self.engine_options(),
            command_line: args.to_vec(),
            distribution: self.distribution.distribution(),
            checkpoints: self.distribution.checkpoints()?,
            resume: self.distribution.resume,
            keep_state: self.distribution.keep_null_state,
            report: self.report.options(),
            share_contrasts: !self.no_shared_contrasts,
            confound: Default::default(),
            raw_cluster_maps: self.raw_stats,
            glm_output: false,
            permout: false,
            variance_smoothing: None,
            voxelwise: None,
            voxelwise_sources: Vec::new(),
        })
    }

    /// randomise's -q or -Q, if given.
    pub fn inquiry(&self) -> Option<Inquiry> {
        if self.count_permutations {
            Some(Inquiry::Count)
        } else if self.parallel_info {
            Some(Inquiry::Parallel)
        } else {
            None
        }
    }

    /// The output prefix, required.
    pub fn out(&self) -> Result<String> {
        if let Some(o) = &self.out {
            if o.ends_with('/') || std::path::Path::new(o).is_dir() {
                return Err(Error::usage(format!(
                    "-o {o}: a directory; give a prefix inside it (e.g. -o {}/run1)",
                    o.trim_end_matches('/')
                )));
            }
        }
        // A FSLOUTPUTTYPE voxflip cannot write fails here, before any work.
        crate::outputs::output_type()?;
        self.out.clone().ok_or_else(|| Error::usage("no output prefix: give -o PREFIX"))
    }
}

impl Default for DistributionArgs {
    /// As the flags' defaults.
    fn default() -> Self {
        DistributionArgs {
            shard: None,
            resume: false,
            checkpoint_seconds: 60.0,
            no_checkpoint: false,
            checkpoint_permutations: None,
            keep_null_state: false,
            merged: None,
        }
    }
}

impl DistributionArgs {
    fn distribution(&self) -> Distribution {
        match (&self.merged, self.shard) {
            (Some(m), _) => Distribution::Merge(m.clone()),
            (None, Some(s)) => Distribution::Shard(s),
            (None, None) => Distribution::Whole,
        }
    }

    fn checkpoints(&self) -> Result<Checkpoints> {
        let s = self.checkpoint_seconds;
        if !(s >= 0.0 && s.is_finite()) {
            return Err(Error::usage(format!("--checkpoint-seconds {s}: give a number of seconds >= 0")));
        }
        if self.checkpoint_permutations == Some(0) {
            return Err(Error::usage("--checkpoint-permutations 0: give at least 1"));
        }
        Ok(Checkpoints { seconds: (!self.no_checkpoint).then_some(s), permutations: self.checkpoint_permutations })
    }
}

#[cfg(test)]
mod tests {
    /// clap's consistency checks of the argument table (unique short flags: randomise's -V
    /// once collided with clap's version flag, and panicked at parse time in debug builds
    /// only). Cargo.toml keeps clap's debug assertions on in release so this runs in CI.
    #[test]
    fn argument_table_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
