//! The command line: randomise's flags for the general GLM (so a randomise script switches
//! by changing the program name), plus subcommands for the group-by-time study, the
//! simulator, the built-in example, the device list and the benchmark.
use crate::analysis::{self, AnalysisOptions, Backend};
use crate::data::{self, Dataset};
use crate::design::Design;
use crate::error::{Error, Result};
use crate::inference::PScale;
use crate::io::{self, participants};
use crate::perm::{Blocks, PermKind};
use crate::simulate;
use crate::spatial::{Connectivity, TfceParams};
use crate::spatial_inference::{SpatialOptions, TfceOptions};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

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
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Pick the GPU adapter whose name contains this.
    #[arg(long)]
    pub adapter: Option<String>,
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
    /// Accepted for randomise scripts: the raw statistic images are always written.
    #[arg(short = 'R', hide = true)]
    pub raw_stats: bool,
    /// Accepted for randomise scripts (diagnostic messages are on unless -q).
    #[arg(short = 'V', hide = true)]
    pub verbose: bool,
    /// No progress bar or messages (errors are still printed).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Engine: auto (hardware GPU if present, else CPU), gpu, or cpu.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Pick the GPU adapter whose name contains this (see `voxflip devices`).
    #[arg(long)]
    pub adapter: Option<String>,
    #[command(flatten)]
    pub spatial: SpatialArgs,
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
            Connectivity::from_count(c).ok_or_else(|| Error::usage(format!("{flag} {c}: connectivity must be 6, 18 or 26")))
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
    /// randomise's variance smoothing: refused with a clear message (not implemented).
    #[arg(short = 'v', value_name = "STD", hide = true)]
    pub variance_smoothing: Option<String>,
    /// randomise's voxelwise EVs: refused with a clear message (not implemented).
    #[arg(long = "vxl", value_name = "COLS", hide = true)]
    pub voxelwise_evs: Option<String>,
    #[arg(long = "vxf", value_name = "FILES", hide = true)]
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
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Also run TFCE (randomise -T).
    #[arg(short = 'T')]
    pub tfce: bool,
}

/// Parse and run; errors come back for `main` to print.
pub fn run(args: Vec<String>) -> Result<()> {
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors.
            let code = e.exit_code();
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match cli.command {
        Some(Command::Interaction(a)) => run_interaction(&a, &args),
        Some(Command::Simulate(a)) => run_simulate(&a),
        Some(Command::Example(a)) => run_example(&a, &args),
        Some(Command::Devices) => {
            print!("{}", crate::engine::describe_devices());
            Ok(())
        }
        Some(Command::Bench(a)) => {
            let gpu = match a.backend {
                Backend::Cpu => None,
                b => Some(crate::engine::gpu::AdapterChoice { name: a.adapter.clone(), allow_software: b == Backend::Gpu }),
            };
            crate::bench::run(a.n_perm, a.tfce, a.tfce_perms.unwrap_or(a.n_perm), gpu)
        }
        None => run_glm(&cli.glm, &args),
    }
}

fn analysis_options(c: &CommonArgs, kind: PermKind, reason: String, args: &[String]) -> Result<AnalysisOptions> {
    Ok(AnalysisOptions {
        blocks: None,
        flip_constant_contrasts: false,
        spatial: c.spatial.options()?,
        n_perm: c.n_perm,
        seed: c.seed,
        perm_kind: kind,
        perm_reason: reason,
        vox_corrp: c.vox_corrp,
        uncorrp: c.uncorrp,
        scale: if c.logp { PScale::NegLog10 } else { PScale::OneMinusP },
        save_null: c.save_null,
        quiet: c.quiet,
        backend: c.backend,
        adapter: c.adapter.clone(),
        command_line: args.to_vec(),
    })
}

fn require_out(c: &CommonArgs) -> Result<String> {
    c.out.clone().ok_or_else(|| Error::usage("no output prefix: give -o PREFIX"))
}

fn read_mask(path: &Option<PathBuf>) -> Result<Option<io::Image>> {
    path.as_ref().map(|p| io::read_image(p)).transpose()
}

fn run_glm(g: &GlmArgs, args: &[String]) -> Result<()> {
    if g.variance_smoothing.is_some() {
        return Err(Error::usage(
            "-v (variance smoothing) is not supported: run without it (t statistics use each voxel's own variance)",
        ));
    }
    if g.voxelwise_evs.is_some() || g.voxelwise_ev_files.is_some() {
        return Err(Error::usage("--vxl/--vxf (voxelwise regressors) are not supported: every regressor must be in -d"));
    }
    let input = g.input.as_ref().ok_or_else(|| Error::usage("no input: give -i 4D.nii.gz (or a subcommand; see --help)"))?;
    let prefix = require_out(&g.common)?;
    let img = io::read_image(input)?;
    let mask = read_mask(&g.common.mask)?;
    let ds = Dataset::from_image(&img, input, mask.as_ref().zip(g.common.mask.as_deref()))?;
    drop(img);
    let mut design = match (&g.design, &g.contrasts) {
        (Some(d), Some(t)) => Design::from_vest(d, t, g.fts.as_deref(), ds.n)?,
        (None, None) if g.one_sample => Design::one_sample(ds.n),
        (None, None) => return Err(Error::usage("no design: give -d design.mat -t design.con, or -1 for a one-sample test")),
        _ => return Err(Error::usage("-d and -t go together")),
    };
    if g.f_only {
        if g.fts.is_none() {
            return Err(Error::usage("--fonly needs F-tests: give -f design.fts"));
        }
        design = design.f_tests_only();
    }
    if g.demean {
        design = design.demeaned(g.design.as_deref().unwrap_or(Path::new("design")))?;
    }
    let (kind, reason) = if let Some(k) = g.perm_kind {
        (k.into(), "chosen with --perm-kind".to_string())
    } else if g.one_sample {
        (PermKind::SignFlip, "sign flips (-1)".to_string())
    } else if design.m.ncols() == 1 && design.m.column(0).iter().all(|&x| x == design.m[(0, 0)]) {
        (PermKind::SignFlip, "sign flips: the design is a single constant column (one-sample test)".to_string())
    } else {
        (PermKind::Permute, "permutations of rows (exchangeable errors)".to_string())
    };
    let mut opts = analysis_options(&g.common, kind, reason, args)?;
    opts.blocks = read_blocks(g, ds.n)?;
    // randomise's default: permute rows, but sign-flip a test of the mean.
    opts.flip_constant_contrasts = g.perm_kind.is_none();
    let report = analysis::run(&ds, &design, &opts, &prefix)?;
    print_summary(&report, opts.quiet);
    Ok(())
}

/// Exchangeability blocks from -e (and --permuteBlocks), checked against the input's volumes.
fn read_blocks(g: &GlmArgs, n: usize) -> Result<Option<Blocks>> {
    let Some(path) = &g.blocks else {
        if g.permute_blocks {
            return Err(Error::usage("--permuteBlocks needs exchangeability blocks: give -e design.grp"));
        }
        return Ok(None);
    };
    let labels = io::read_grp(path)?;
    if labels.len() != n {
        return Err(Error::input(path, format!("{} rows, but the input has {n} volumes (one block number per volume)", labels.len())));
    }
    Blocks::from_labels(&labels, g.permute_blocks).map(Some).map_err(|e| Error::input(path, e))
}

/// Load --pre/--post as 4D files or per-subject patterns, in participants.tsv order.
fn load_session(spec: &str, ids: &[String]) -> Result<(io::Image, PathBuf)> {
    if spec.contains("{participant_id}") {
        let mut imgs = Vec::with_capacity(ids.len());
        for id in ids {
            let p = PathBuf::from(spec.replace("{participant_id}", id));
            if !p.exists() {
                return Err(Error::input(&p, format!("no such file for participant {id}")));
            }
            imgs.push((io::read_image(&p)?, p));
        }
        Ok((data::stack(imgs)?, PathBuf::from(spec)))
    } else {
        let p = PathBuf::from(spec);
        let img = io::read_image(&p)?;
        if img.nvol != ids.len() {
            return Err(Error::input(
                &p,
                format!("has {} volumes but participants.tsv lists {} participants (one volume per participant, in that order)", img.nvol, ids.len()),
            ));
        }
        Ok((img, p))
    }
}

fn run_interaction(a: &InteractionArgs, args: &[String]) -> Result<()> {
    let prefix = require_out(&a.common)?;
    let parts = participants::read_participants(&a.participants, &a.group_column)?;
    let levels = parts.group_levels();
    let names: Vec<String> = match &a.groups {
        Some(g) => {
            if g.len() != 2 {
                return Err(Error::usage(format!("--groups takes two names, got {}", g.len())));
            }
            g.clone()
        }
        None => levels.clone(),
    };
    if names.len() != 2 {
        return Err(Error::input(
            &a.participants,
            format!("column '{}' has {} groups ({}); the interaction needs exactly two (or name them with --groups)", a.group_column, levels.len(), levels.join(", ")),
        ));
    }
    let mut groups = Vec::with_capacity(parts.ids.len());
    for (id, g) in parts.ids.iter().zip(&parts.groups) {
        match names.iter().position(|n| n == g) {
            Some(k) => groups.push(k),
            None => {
                return Err(Error::input(&a.participants, format!("participant {id} is in group '{g}', which is not one of {}", names.join(", "))))
            }
        }
    }
    for (k, name) in names.iter().enumerate() {
        let c = groups.iter().filter(|&&g| g == k).count();
        if c < 2 {
            return Err(Error::input(&a.participants, format!("group '{name}' has {c} participant(s); at least 2 are needed")));
        }
    }
    let (pre, pre_path) = load_session(&a.pre, &parts.ids)?;
    let (post, post_path) = load_session(&a.post, &parts.ids)?;
    let diff = data::difference(&pre, &pre_path, &post, &post_path)?;
    drop((pre, post));
    let mask = read_mask(&a.common.mask)?;
    let ds = Dataset::from_image(&diff, &post_path, mask.as_ref().zip(a.common.mask.as_deref()))?;
    drop(diff);
    let design = Design::group_by_time(&groups, &[names[0].clone(), names[1].clone()]);
    let (kind, reason) = if a.permute {
        (PermKind::Permute, "group labels exchanged (--permute)".to_string())
    } else {
        (PermKind::SignFlip, "sign flips of post - pre (Freedman-Lane, group means as nuisance)".to_string())
    };
    let mut opts = analysis_options(&a.common, kind, reason, args)?;
    opts.vox_corrp = true;
    // With --permute, the time effect (tstat3, a mean) is still sign-flipped: exchanging
    // group labels cannot test a mean.
    opts.flip_constant_contrasts = true;
    let report = analysis::run(&ds, &design, &opts, &prefix)?;
    print_summary(&report, opts.quiet);
    Ok(())
}

fn parse_grid(s: &str) -> Result<simulate::SimGrid> {
    match s {
        "2mm" | "mni2mm" => Ok(simulate::SimGrid::Mni2mm),
        "small" | "4mm" => Ok(simulate::SimGrid::Small),
        other => Err(Error::usage(format!("--grid {other}: expected 2mm or small"))),
    }
}

fn run_simulate(a: &SimulateArgs) -> Result<()> {
    let cfg = simulate::SimConfig { grid: parse_grid(&a.grid)?, n_a: a.n_a, n_b: a.n_b, seed: a.seed, ..Default::default() };
    let data = simulate::simulate(&cfg);
    let files = simulate::write_dataset(&data, &a.out)?;
    eprintln!("voxflip: wrote {} files to {}", files.len(), a.out.display());
    Ok(())
}

fn run_example(a: &ExampleArgs, args: &[String]) -> Result<()> {
    let cfg = simulate::SimConfig { grid: parse_grid(&a.grid)?, ..Default::default() };
    let data_dir = a.dir.join("data");
    if !a.quiet {
        eprintln!("voxflip: simulating the study ({} and {} subjects, pre and post) into {}", cfg.n_a, cfg.n_b, data_dir.display());
    }
    let sim = simulate::simulate(&cfg);
    simulate::write_dataset(&sim, &data_dir)?;
    let results = a.dir.join("results");
    std::fs::create_dir_all(&results).map_err(|e| Error::output(&results, e.to_string()))?;
    let prefix = results.join("interaction").display().to_string();
    let ia = InteractionArgs {
        pre: data_dir.join("pre.nii.gz").display().to_string(),
        post: data_dir.join("post.nii.gz").display().to_string(),
        participants: data_dir.join("participants.tsv"),
        group_column: "group".into(),
        groups: None,
        permute: false,
        common: CommonArgs {
            out: Some(prefix.clone()),
            mask: Some(data_dir.join("mask.nii.gz")),
            n_perm: a.n_perm,
            vox_corrp: true,
            uncorrp: false,
            seed: 0,
            logp: false,
            save_null: false,
            raw_stats: false,
            verbose: false,
            quiet: a.quiet,
            backend: a.backend,
            adapter: None,
            spatial: SpatialArgs { tfce: a.tfce, ..Default::default() },
        },
    };
    run_interaction(&ia, args)?;
    // What the outputs show, against the truth the simulator planted.
    let truth = io::read_image(&data_dir.join("truth_interaction.nii.gz"))?;
    let true_n = truth.data.iter().filter(|&&t| t > 0.0).count();
    let against_truth = |map: &str| -> Result<(usize, usize)> {
        let corrp = io::read_image(Path::new(&format!("{prefix}_{map}_tstat1.nii.gz")))?;
        let sig: Vec<bool> = corrp.data.iter().map(|&x| x >= 0.95).collect();
        let hits = sig.iter().zip(&truth.data).filter(|(&s, &t)| s && t > 0.0).count();
        let false_pos = sig.iter().zip(&truth.data).filter(|(&s, &t)| s && t <= 0.0).count();
        Ok((hits, false_pos))
    };
    let (hits, false_pos) = against_truth("vox_corrp")?;
    println!("\nResults in {}:", results.display());
    println!("  interaction_tstat1.nii.gz          t map, {} > {} in post - pre", sim.groups[0], sim.groups.iter().find(|g| **g != sim.groups[0]).cloned().unwrap_or_default());
    println!("  interaction_vox_corrp_tstat1.nii.gz  1 - FWE-corrected p (>= 0.95 is significant at 0.05)");
    println!("  tstat2: the other direction; tstat3: time effect across all subjects; interaction_voxflip.json: provenance");
    println!("Against the simulated truth (data/truth_interaction.nii.gz):");
    println!("  voxelwise max-T: {hits} of {true_n} true-effect voxels significant (FWE 0.05), {false_pos} significant voxels outside the true effect");
    if a.tfce {
        let (hits, false_pos) = against_truth("tfce_corrp")?;
        println!("  TFCE:            {hits} of {true_n} true-effect voxels significant (FWE 0.05), {false_pos} significant voxels outside the true effect");
        println!("  (TFCE spreads support to the effect's tapered edges; its FWE control is per image, so voxels just outside a true blob can be significant.)");
    }
    println!("  interaction_clusters_tstat1.tsv / _lmax_tstat1.tsv: the clusters and local maxima in MNI mm, for a results table");
    Ok(())
}

fn print_summary(r: &analysis::RunReport, quiet: bool) {
    if quiet {
        return;
    }
    // Contrasts may differ in what was exchanged (a mean is sign-flipped): list each kind once.
    let mut parts: Vec<String> = Vec::new();
    for c in &r.contrasts {
        let what = match c.permutation_kind {
            PermKind::SignFlip => "sign flips",
            PermKind::Permute => "permutations",
            PermKind::Both => "permutations+flips",
        };
        let part = format!("{} {what} ({})", c.permutations, if c.exhaustive { "exhaustive" } else { "random" });
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    eprintln!(
        "voxflip: {} images, {} voxels, {}, {:.1} s on {}",
        r.n_images,
        r.n_voxels,
        parts.join(" and "),
        r.seconds_total,
        r.backend
    );
    for c in &r.contrasts {
        eprintln!(
            "  {:8} {:45} max {:7.3}  FWE 0.05 threshold {:7.3}  {:7} voxels significant",
            c.name, c.label, c.max_stat, c.fwe05_threshold, c.voxels_fwe05
        );
        for s in &c.spatial {
            eprintln!("  {:8} {:>45} {:>36}  {:7} voxels significant", "", format!("{} (FWE from its own null)", s.statistic), "", s.voxels_fwe05);
        }
    }
    eprintln!("  outputs: {} files, e.g. {}", r.outputs.len(), r.outputs.first().map(|p| p.display().to_string()).unwrap_or_default());
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
