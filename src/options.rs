//! The validated options of an analysis: what the command line means, in the types the
//! pipeline and the engines take (the flags themselves are in `cli`).
use voxflip_engines::EngineOptions;
use voxflip_stats::spatial::SpatialOptions;
use voxflip_stats::{Blocks, PScale, PermKind};

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
}
