//! The validated options of an analysis: what the command line means, in the types the
//! pipeline and the engines take (the flags themselves are in `cli`).
use crate::state::{Merged, Shard};
use std::sync::Arc;
use voxflip_engines::EngineOptions;
use voxflip_stats::spatial::SpatialOptions;
use voxflip_stats::{Blocks, ConfoundMethod, PScale, PermKind};

/// What a run does with its permutation set.
#[derive(Clone, Debug)]
pub enum Distribution {
    /// Every permutation, then the outputs.
    Whole,
    /// One slice of the set; its state goes to `{out}_shard-K-of-N` and no map is written.
    Shard(Shard),
    /// No permutations: the merged state of shards, then the outputs.
    Merge(Arc<Merged>),
}

/// When a run writes its checkpoint (`--checkpoint-seconds`).
#[derive(Clone, Copy, Debug)]
pub struct Checkpoints {
    /// At least this long between checkpoints; None: none written.
    pub seconds: Option<f64>,
    /// Permutations between the points where a checkpoint may be written; None: the
    /// default (a few batches).
    pub permutations: Option<usize>,
}

/// Everything about a run that is not the data or the design.
#[derive(Clone, Debug)]
pub struct AnalysisOptions {
    /// Permutations requested (randomise -n; 0 = all). Exhaustive when there are at most
    /// this many distinct ones.
    pub n_perm: usize,
    pub seed: u64,
    pub perm_kind: PermKind,
    /// Why that kind was chosen (for stderr and the sidecar).
    pub perm_reason: String,
    /// Exchangeability blocks (randomise -e, --permuteBlocks); None: every row exchangeable.
    pub blocks: Option<Blocks>,
    /// randomise --effective_design: the matrix (N rows) whose identical rows say which
    /// relabelings are distinct, instead of the design's; None: the design.
    pub effective_design: Option<nalgebra::DMatrix<f64>>,
    /// randomise --detectNull: rows where a contrast's effective regressor is zero are not
    /// permuted.
    pub detect_null: bool,
    /// randomise -P: write each contrast's permutation vectors ({prefix}_perm_tstat1.txt).
    pub perm_vectors: bool,
    /// When `perm_kind` is Permute by default (not the user's choice): contrasts that test
    /// the constant (a mean, see ContrastModel::tests_constant) are sign-flipped instead.
    pub flip_constant_contrasts: bool,
    /// Write voxelwise FWE-corrected p maps (randomise -x).
    pub vox_corrp: bool,
    /// Write uncorrected p maps (--uncorrp).
    pub uncorrp: bool,
    pub scale: PScale,
    /// Also write the whole max-statistic null as text.
    pub save_null: bool,
    /// No progress bar, no messages but warnings and errors.
    pub quiet: bool,
    /// Which engines run and how (recorded in the sidecar).
    pub engine: EngineOptions,
    /// The command line, recorded in the sidecar.
    pub command_line: Vec<String>,
    /// TFCE and cluster inference.
    pub spatial: SpatialOptions,
    pub distribution: Distribution,
    pub checkpoints: Checkpoints,
    /// Continue from the checkpoint of an interrupted run with the same prefix (--resume).
    pub resume: bool,
    /// Also write the run's state as `{out}_shard-1-of-1`, so that `voxflip merge` can
    /// rewrite its outputs with other output options (--keep-null-state).
    pub keep_state: bool,
    /// The HTML report.
    pub report: ReportOptions,
    /// A t contrast and its mirror (the next contrast, weights negated) share one product
    /// on the CPU engine (--no-shared-contrasts: each runs its own; the outputs are the same).
    pub share_contrasts: bool,
    /// How the nuisance is handled under permutation (randomise -U; Freedman–Lane by default).
    pub confound: ConfoundMethod,
    /// Also write the observed cluster-extent and cluster-mass maps (randomise -R).
    pub raw_cluster_maps: bool,
    /// Also write the unpermuted GLM's maps of the t contrasts (randomise --glm_output).
    pub glm_output: bool,
    /// Also write every permutation's maps (randomise --permout; bounded, see `permout`).
    pub permout: bool,
    /// randomise -v: the std (mm) of the variance smoothing of t contrasts (the pseudo-t).
    pub variance_smoothing: Option<f64>,
    /// Voxelwise regressors (randomise --vxl/--vxf): design columns replaced at each voxel.
    pub voxelwise: Option<Arc<voxflip_stats::VoxelwiseEvs>>,
    /// Their files and 1-based columns as typed, for the sidecar and the run's identity.
    pub voxelwise_sources: Vec<(usize, std::path::PathBuf)>,
}

/// The HTML report a run ends with.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReportOptions {
    /// Write `{prefix}_report.html` (--no-report: not).
    pub enabled: bool,
    /// The background image; None: the mean of the analysed images (`{prefix}_mean`).
    pub background: Option<std::path::PathBuf>,
    /// Atlas specifications (--atlas); empty: FSL's Harvard-Oxford when FSLDIR is set.
    pub atlases: Vec<String>,
}
