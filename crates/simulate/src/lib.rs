//! `voxflip simulate`: a realistic two-group, two-time dataset with known effects.
//!
//! It mirrors the driving study: group A ("compassion") and group B ("memory") each give one
//! contrast map per subject before and after training. The truth is known, so the data test
//! the whole pipeline (design from participants.tsv, post - pre differences, the group-by-time
//! contrast, max-T / cluster / TFCE inference) end to end.
//!
//! Model, per subject s and session t (maps in units of the noise SD at a voxel):
//!
//! ```text
//! Y[s,t] = A_SUBJ * S[s] + o[s] + B_SESS * E[s,t] + activation + (s in A and t = post) * interaction
//! ```
//!
//! with S and E independent smooth unit-variance Gaussian fields (FWHM `fwhm_mm`), o[s] a
//! global offset ~ N(0, OFFSET_SD^2), A_SUBJ^2 + OFFSET_SD^2 = B_SESS^2 = 1/2. So every map
//! has unit noise variance, pre and post correlate at PRE_POST_CORRELATION = 0.5 (typical
//! test-retest reliability of task contrast maps), and a post - pre difference has noise
//! variance exactly 1: the effect sizes below are standardized effects of the differences.

mod anatomy;
mod noise;

mod study;

pub use anatomy::{
    in_brain, planted_regions, profile, Region, SimGrid, ACTIVATION_REGIONS, INTERACTION_REGIONS, PLATEAU_FRACTION,
};
pub use study::{driving_study, DrivingStudy};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use voxflip_io::{Error, Result};

/// Correlation of a subject's pre and post noise.
pub const PRE_POST_CORRELATION: f64 = 0.5;
/// SD of the subject-specific global offset (part of the stable subject component).
pub const OFFSET_SD: f64 = 0.2;

/// Weight of the subject's smooth component: with the offset it makes up the shared variance.
fn subject_weight() -> f32 {
    (PRE_POST_CORRELATION - OFFSET_SD * OFFSET_SD).sqrt() as f32
}

/// Weight of each session's own smooth noise.
fn session_weight() -> f32 {
    (1.0 - PRE_POST_CORRELATION).sqrt() as f32
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub grid: SimGrid,
    /// Subjects in group A (listed first) and group B.
    pub n_a: usize,
    pub n_b: usize,
    pub seed: u64,
    /// Smoothness of the noise, mm FWHM.
    pub fwhm_mm: f64,
    /// Increase of group A's post maps over pre on the plateau of each interaction region,
    /// in SDs of the post - pre difference (Cohen's d of the change).
    pub interaction_effect: f32,
    /// Effect in every map on the plateau of each activation region, in noise SDs.
    pub activation_effect: f32,
    /// Labels of groups A and B in participants.tsv.
    pub group_names: [String; 2],
}

impl Default for SimConfig {
    /// The driving study: 28 compassion + 30 memory subjects, MNI 2 mm, FWHM 8 mm.
    ///
    /// interaction_effect = 1.5: the two-sample t of the changes has noncentrality
    /// 1.5 * sqrt(28 * 30 / 58) = 5.7 on the plateaus, just above the whole-brain max-T FWE
    /// threshold at this smoothness (t = 5.4-5.5 from 500 label permutations of the 2 mm
    /// data; `tests::calibrate_default_detection`). Over seeds 1-5, voxelwise max-T then
    /// finds 4 to 6 of the 6 regions (5.4 on average) but only 14-24% of the truth voxels
    /// (the smooth edges hold most of each sphere's volume); the small regions (pallidum,
    /// VTA) are borderline, so cluster and TFCE inference have something to gain:
    /// detectable, not trivial. (Seeds 1-2: at 1.2 max-T finds 4-5 of 6 regions and 8% of
    /// the voxels; at 1.8, 6 of 6 and 36%.)
    /// activation_effect = 0.8: a robust task activation; the session mean of 58 subjects
    /// gives a one-sample t of about 0.8 / sqrt(0.75) * sqrt(58) = 7.
    /// 8 mm FWHM is the smoothness of typical smoothed first-level contrast maps.
    fn default() -> Self {
        SimConfig {
            grid: SimGrid::Mni2mm,
            n_a: 28,
            n_b: 30,
            seed: 1,
            fwhm_mm: 8.0,
            interaction_effect: 1.5,
            activation_effect: 0.8,
            group_names: ["compassion".to_string(), "memory".to_string()],
        }
    }
}

/// A simulated dataset. 3D arrays are x fastest; 4D arrays are x, y, z, then subject.
#[derive(Clone, Debug, PartialEq)]
pub struct SimData {
    pub dims: [usize; 3],
    pub pixdim: [f32; 3],
    /// Voxel -> MNI mm, row-major 3x4.
    pub affine: [[f64; 4]; 3],
    pub mask: Vec<bool>,
    pub pre: Vec<f32>,
    pub post: Vec<f32>,
    /// In-mask voxels where group A's post - pre change is nonzero.
    pub truth_interaction: Vec<bool>,
    /// In-mask voxels where every map carries the activation.
    pub truth_activation: Vec<bool>,
    /// "sub-01", ... (zero padded to the width of the largest number, at least 2).
    pub ids: Vec<String>,
    /// Group label per subject, in the order of `ids` and of the 4D volumes.
    pub groups: Vec<String>,
    /// The configuration that produced the data (for the README).
    pub config: SimConfig,
}

impl SimData {
    pub fn nvox(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn n_subjects(&self) -> usize {
        self.ids.len()
    }
}

/// RNG stream of one (subject, component): 0 = subject component and offset, 1 = pre, 2 = post.
/// Each stream depends only on the seed and its own index, so results do not depend on the
/// order or the threads that rayon uses.
fn stream(seed: u64, subject: usize, component: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(subject as u64 * 4 + component);
    rng
}

/// Simulate the dataset; deterministic for `cfg.seed`.
pub fn simulate(cfg: &SimConfig) -> SimData {
    let grid = cfg.grid;
    let dims = grid.dims();
    let nvox: usize = dims.iter().product();
    let n = cfg.n_a + cfg.n_b;

    let mask = anatomy::brain_mask(grid);
    let activation = anatomy::effect_map(grid, &mask, &ACTIVATION_REGIONS, cfg.activation_effect);
    let interaction = anatomy::effect_map(grid, &mask, &INTERACTION_REGIONS, cfg.interaction_effect);
    let smoother = noise::Smoother::new(dims, grid.pixdim(), cfg.fwhm_mm);
    let (ws, we) = (subject_weight(), session_weight());

    let mut pre = vec![0.0f32; nvox * n];
    let mut post = vec![0.0f32; nvox * n];
    pre.par_chunks_mut(nvox).zip(post.par_chunks_mut(nvox)).enumerate().for_each_init(
        || (vec![0.0f32; nvox], vec![0.0f32; nvox], vec![0.0f32; nvox]),
        |(subj, sess, scratch), (s, (pre_s, post_s))| {
            let mut rng = stream(cfg.seed, s, 0);
            let mut offset = [0.0f32; 1];
            noise::fill_normal(&mut rng, &mut offset);
            let offset = offset[0] * OFFSET_SD as f32;
            smoother.field(&mut rng, subj, scratch);
            let in_a = s < cfg.n_a;
            for (t, out) in [pre_s, post_s].into_iter().enumerate() {
                smoother.field(&mut stream(cfg.seed, s, 1 + t as u64), sess, scratch);
                let gain = if in_a && t == 1 { 1.0 } else { 0.0 };
                for v in 0..nvox {
                    if mask[v] {
                        out[v] = ws * subj[v] + offset + we * sess[v] + activation[v] + gain * interaction[v];
                    }
                }
            }
        },
    );

    let width = n.to_string().len().max(2);
    SimData {
        dims,
        pixdim: grid.pixdim(),
        affine: grid.affine(),
        truth_interaction: anatomy::truth_mask(grid, &mask, &INTERACTION_REGIONS),
        truth_activation: anatomy::truth_mask(grid, &mask, &ACTIVATION_REGIONS),
        mask,
        pre,
        post,
        ids: (1..=n).map(|i| format!("sub-{i:0width$}")).collect(),
        groups: (0..n).map(|s| cfg.group_names[usize::from(s >= cfg.n_a)].clone()).collect(),
        config: cfg.clone(),
    }
}

/// Write the dataset into `dir` (created if needed) and return the paths written:
/// pre.nii.gz, post.nii.gz (4D float32, one volume per subject in participants.tsv order),
/// mask.nii.gz, truth_interaction.nii.gz, truth_activation.nii.gz (0/1 float32),
/// participants.tsv and README.txt.
pub fn write_dataset(data: &SimData, dir: &Path) -> Result<Vec<PathBuf>> {
    use voxflip_io::{header_from_affine, write_image};
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e.to_string()))?;
    const MNI152: i16 = 4;
    let header = header_from_affine(data.dims, data.pixdim, data.affine, MNI152);
    let n = data.n_subjects();
    let as_f32 = |m: &[bool]| m.iter().map(|&b| f32::from(u8::from(b))).collect::<Vec<f32>>();

    let mut written = Vec::new();
    let grid = data.config.grid;
    let images: [(&str, usize, std::borrow::Cow<[f32]>); 7] = [
        ("pre.nii.gz", n, (&data.pre[..]).into()),
        ("post.nii.gz", n, (&data.post[..]).into()),
        ("mask.nii.gz", 1, as_f32(&data.mask).into()),
        ("truth_interaction.nii.gz", 1, as_f32(&data.truth_interaction).into()),
        ("truth_activation.nii.gz", 1, as_f32(&data.truth_activation).into()),
        ("regions.nii.gz", 1, anatomy::region_labels(grid, &data.mask).into()),
        ("anatomy.nii.gz", 1, anatomy::synthetic_t1(grid).into()),
    ];
    for (name, nvol, values) in &images {
        let path = dir.join(name);
        write_image(&path, &header, data.dims, *nvol, values)?;
        written.push(path);
    }

    let mut tsv = String::from("participant_id\tgroup\n");
    for (id, g) in data.ids.iter().zip(&data.groups) {
        writeln!(tsv, "{id}\t{g}").unwrap();
    }
    let mut regions = String::from("index\tname\n");
    for (k, r) in anatomy::planted_regions().iter().enumerate() {
        writeln!(regions, "{}\t{}", k + 1, r.name).unwrap();
    }
    for (name, text) in [("participants.tsv", tsv), ("regions.tsv", regions), ("README.txt", readme(data))] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::output(&path, e.to_string()))?;
        written.push(path);
    }
    Ok(written)
}

/// The README: what the files are and where the true effects are.
fn readme(data: &SimData) -> String {
    let c = &data.config;
    let count = |m: &[bool]| m.iter().filter(|&&b| b).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Simulated dataset written by voxflip simulate {} (seed {}).\n\n\
         Design: two groups, each subject scanned before (pre) and after (post) training,\n\
         one contrast map per subject per session.\n  group A \"{}\": {} subjects ({} .. {})\n  group B \"{}\": {} subjects ({} .. {})\n",
        env!("CARGO_PKG_VERSION"),
        c.seed,
        c.group_names[0],
        c.n_a,
        data.ids.first().map_or("-", |x| x.as_str()),
        data.ids.get(c.n_a.saturating_sub(1)).map_or("-", |x| x.as_str()),
        c.group_names[1],
        c.n_b,
        data.ids.get(c.n_a).map_or("-", |x| x.as_str()),
        data.ids.last().map_or("-", |x| x.as_str()),
    );
    let _ = writeln!(
        s,
        "Files\n\
         \x20 pre.nii.gz, post.nii.gz   4D float32, {}x{}x{} voxels of {} mm, MNI152 space (sform and\n\
         \x20                           qform code 4); volume i is the subject on row i of participants.tsv\n\
         \x20 mask.nii.gz               brain mask ({} voxels); the data are 0 outside it\n\
         \x20 truth_interaction.nii.gz  voxels where group A's post - pre change is nonzero ({} voxels)\n\
         \x20 truth_activation.nii.gz   voxels where every map is activated ({} voxels)\n\
         \x20 regions.nii.gz, .tsv      label image of the planted regions and its index -> name table\n\
         \x20                           (an atlas for --atlas)\n\
         \x20 anatomy.nii.gz            a T1-like picture of the simulated brain (for --background)\n\
         \x20 participants.tsv          participant_id, group (BIDS)\n",
        data.dims[0],
        data.dims[1],
        data.dims[2],
        data.pixdim[0],
        count(&data.mask),
        count(&data.truth_interaction),
        count(&data.truth_activation),
    );
    let _ = writeln!(
        s,
        "Noise: smooth Gaussian fields, FWHM {} mm, unit variance at every voxel. Each subject has a\n\
         stable component (smooth field plus a global offset of SD {}) shared by pre and post, and\n\
         independent session noise, so pre and post correlate at {} and post - pre has noise SD 1.\n",
        c.fwhm_mm, OFFSET_SD, PRE_POST_CORRELATION
    );
    let region_lines = |s: &mut String, regions: &[Region]| {
        for r in regions {
            let _ = writeln!(
                s,
                "  {:<30} centre ({:>4}, {:>4}, {:>4}) mm, radius {} mm",
                r.name, r.centre_mm[0], r.centre_mm[1], r.centre_mm[2], r.radius_mm
            );
        }
    };
    let _ = writeln!(
        s,
        "True effects: spheres in MNI mm, full size within {:.0}% of the radius, falling smoothly\n\
         (raised cosine) to 0 at the radius.\n\n\
         Group-by-time interaction: group A's post maps exceed pre by {} (standardized effect of\n\
         the post - pre difference); group B does not change. Contrast: (post - pre), A > B.",
        PLATEAU_FRACTION * 100.0,
        c.interaction_effect
    );
    region_lines(&mut s, &INTERACTION_REGIONS);
    let _ = writeln!(
        s,
        "\nActivation in both sessions of every subject, size {} (noise SDs): found by a one-sample\n\
         test of the maps or their session mean; absent from every post - pre difference.",
        c.activation_effect
    );
    region_lines(&mut s, &ACTIVATION_REGIONS);
    s
}

#[cfg(test)]
// The tests report the properties they measure.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;

    fn small(n_a: usize, n_b: usize, seed: u64) -> SimConfig {
        SimConfig { grid: SimGrid::Small, n_a, n_b, seed, ..SimConfig::default() }
    }

    fn count(m: &[bool]) -> usize {
        m.iter().filter(|&&b| b).count()
    }

    #[test]
    fn same_seed_same_data_in_any_thread_count() {
        let cfg = small(3, 2, 7);
        let a = simulate(&cfg);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let b = pool.install(|| simulate(&cfg));
        assert!(a == b, "same seed must give identical data with 1 thread and with the pool");
        let c = simulate(&small(3, 2, 8));
        assert!(a.pre != c.pre, "a different seed must give different data");
        assert_eq!(a.ids, ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]);
        assert_eq!(a.groups, ["compassion", "compassion", "compassion", "memory", "memory"]);
    }

    #[test]
    fn mask_has_the_size_of_the_mni_brain_mask() {
        // FSL's MNI152_T1_2mm_brain_mask has 228,483 voxels; the brief asks for +-3%.
        let n2 = count(&anatomy::brain_mask(SimGrid::Mni2mm));
        let n4 = count(&anatomy::brain_mask(SimGrid::Small));
        eprintln!("in-mask voxels: 2 mm {n2}, 4 mm {n4} (x8 = {})", n4 * 8);
        assert!((n2 as f64 / 228_000.0 - 1.0).abs() < 0.03, "2 mm mask has {n2} voxels");
        assert!((n4 as f64 * 8.0 / n2 as f64 - 1.0).abs() < 0.05, "4 mm mask has {n4} voxels");
        // Every effect centre lies in the brain.
        for r in ACTIVATION_REGIONS.iter().chain(&INTERACTION_REGIONS) {
            assert!(in_brain(r.centre_mm), "{} is outside the mask", r.name);
        }
    }

    /// Correlation of neighbours `lag` voxels apart along `axis`, both in the mask, pooled
    /// over fields (raw moments: the fields have mean 0 by construction).
    fn lag_correlation(fields: &[Vec<f32>], mask: &[bool], dims: [usize; 3], axis: usize, lag: usize) -> f64 {
        let stride = [1, dims[0], dims[0] * dims[1]][axis];
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        for f in fields {
            for k in 0..dims[2] {
                for j in 0..dims[1] {
                    for i in 0..dims[0] {
                        let pos = [i, j, k][axis];
                        if pos + lag >= dims[axis] {
                            continue;
                        }
                        let v = i + dims[0] * (j + dims[1] * k);
                        let w = v + lag * stride;
                        if mask[v] && mask[w] {
                            let (a, b) = (f[v] as f64, f[w] as f64);
                            xy += a * b;
                            xx += a * a;
                            yy += b * b;
                        }
                    }
                }
            }
        }
        xy / (xx * yy).sqrt()
    }

    #[test]
    fn noise_has_the_requested_smoothness_and_unit_variance() {
        // For white noise smoothed by a Gaussian of FWHM F, neighbours d apart correlate at
        // exp(-d^2 / (4 sigma^2)) = 2^(-2 (d/F)^2): 1/sqrt(2) at d = 4 mm, 1/4 at d = 8 mm for
        // F = 8 mm. The kernel sampled at 4 mm spacing (sigma = 0.85 voxel) is within 0.003 of
        // that, checked first. The estimate pools 24 fields of ~28,000 in-mask voxels, about
        // 3,500 resels each, so its standard error is below 0.005: a 0.03 tolerance is ~6 SE
        // and still catches a wrong sigma (FWHM 7 or 9 mm move the lag-1 value by > 0.04).
        let grid = SimGrid::Small;
        let dims = grid.dims();
        let mask = anatomy::brain_mask(grid);
        let smoother = noise::Smoother::new(dims, grid.pixdim(), 8.0);
        let n = smoother.nvox();
        let fields: Vec<Vec<f32>> = (0..24)
            .into_par_iter()
            .map(|s| {
                let (mut f, mut scratch) = (vec![0.0; n], vec![0.0; n]);
                smoother.field(&mut stream(3, s, 0), &mut f, &mut scratch);
                f
            })
            .collect();
        for (lag, theory) in [(1usize, 0.5f64.sqrt()), (2, 0.25)] {
            let sampled = noise::kernel_lag_correlation(4.0, 8.0, lag);
            assert!((sampled - theory).abs() < 0.003, "sampled kernel lag {lag}: {sampled} vs {theory}");
            for axis in 0..3 {
                let r = lag_correlation(&fields, &mask, dims, axis, lag);
                eprintln!("axis {axis} lag {lag} ({} mm): r = {r:.4}, theory {theory:.4}", 4 * lag);
                assert!((r - theory).abs() < 0.03, "axis {axis} lag {lag}: r = {r}, expected {theory}");
            }
        }
        // Unit variance in the mask: mean square over 24 x 28,000 values, SE ~ 0.005.
        let (mut ss, mut m) = (0.0f64, 0usize);
        for f in &fields {
            for v in (0..n).filter(|&v| mask[v]) {
                ss += (f[v] as f64).powi(2);
                m += 1;
            }
        }
        let var = ss / m as f64;
        eprintln!("field variance in mask: {var:.4}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }

    /// Per-voxel variance across subjects, averaged over the mask, and the pooled pre/post
    /// correlation across subjects.
    fn across_subject_moments(d: &SimData) -> (f64, f64) {
        let (n, nvox) = (d.n_subjects(), d.nvox());
        let (mut var_pre, mut cov, mut var_post, mut voxels) = (0.0, 0.0, 0.0, 0usize);
        for v in (0..nvox).filter(|&v| d.mask[v]) {
            let a: Vec<f64> = (0..n).map(|s| d.pre[s * nvox + v] as f64).collect();
            let b: Vec<f64> = (0..n).map(|s| d.post[s * nvox + v] as f64).collect();
            let (ma, mb) = (a.iter().sum::<f64>() / n as f64, b.iter().sum::<f64>() / n as f64);
            for s in 0..n {
                var_pre += (a[s] - ma).powi(2);
                var_post += (b[s] - mb).powi(2);
                cov += (a[s] - ma) * (b[s] - mb);
            }
            voxels += 1;
        }
        let df = (n - 1) as f64 * voxels as f64;
        (var_pre / df, cov / (var_pre * var_post).sqrt())
    }

    #[test]
    fn maps_have_unit_variance_and_pre_post_correlate() {
        // Without effects every map is noise of variance 1 (subject field + offset + session
        // noise) and pre/post correlate at 0.5. 40 subjects: the SE of the mask average is
        // ~0.01 for the variance (the shared offsets dominate) and ~0.02 for the correlation.
        let cfg = SimConfig { interaction_effect: 0.0, activation_effect: 0.0, ..small(20, 20, 11) };
        let d = simulate(&cfg);
        let (var, r) = across_subject_moments(&d);
        eprintln!("across-subject variance {var:.4}, pre/post correlation {r:.4}");
        assert!((var - 1.0).abs() < 0.06, "variance {var}");
        assert!(r > 0.0 && (r - PRE_POST_CORRELATION).abs() < 0.08, "pre/post correlation {r}");
        let nvox = d.nvox();
        for s in 0..d.n_subjects() {
            for v in (0..nvox).filter(|&v| !d.mask[v]) {
                assert!(d.pre[s * nvox + v] == 0.0 && d.post[s * nvox + v] == 0.0);
            }
        }
    }

    #[test]
    fn effects_are_added_exactly_where_the_truth_says() {
        // Same seed, so the noise is identical: the difference of two runs is the effect alone.
        let base = SimConfig { interaction_effect: 0.0, activation_effect: 0.0, ..small(2, 2, 5) };
        let with = SimConfig { interaction_effect: 1.5, activation_effect: 0.7, ..base.clone() };
        let (d0, d1) = (simulate(&base), simulate(&with));
        let nvox = d0.nvox();
        assert!(count(&d1.truth_interaction) > 50 && count(&d1.truth_activation) > 30);
        assert!(!d1.truth_interaction.iter().zip(&d1.truth_activation).any(|(&a, &b)| a && b));
        for s in 0..4 {
            for v in 0..nvox {
                let act = d1.pre[s * nvox + v] - d0.pre[s * nvox + v];
                let post = d1.post[s * nvox + v] - d0.post[s * nvox + v];
                assert!((act > 1e-6) == d1.truth_activation[v], "activation at voxel {v}");
                assert!(act <= 0.7 + 1e-5);
                let inter = post - act;
                if s < 2 {
                    assert!((inter > 1e-6) == d1.truth_interaction[v], "interaction at voxel {v}");
                    assert!(inter <= 1.5 + 1e-5);
                } else {
                    assert!(inter.abs() < 1e-5, "group B changed at voxel {v}");
                }
            }
        }
    }

    #[test]
    fn interaction_shows_in_the_group_difference_of_changes() {
        // mean(post - pre | A) - mean(post - pre | B) at default sizes (28 + 30 subjects):
        // inside the truth it estimates the mean effect there (SE ~0.1 over ~100 voxels in
        // ~6 blobs), outside it is 0 (SE ~0.005 over ~3,500 resels).
        let cfg = small(28, 30, 2);
        let d = simulate(&cfg);
        let nvox = d.nvox();
        let expected = anatomy::effect_map(cfg.grid, &d.mask, &INTERACTION_REGIONS, cfg.interaction_effect);
        let (mut inside, mut exp_inside, mut n_in, mut outside, mut n_out) = (0.0, 0.0, 0usize, 0.0, 0usize);
        for v in (0..nvox).filter(|&v| d.mask[v]) {
            let change = |s: usize| (d.post[s * nvox + v] - d.pre[s * nvox + v]) as f64;
            let ma = (0..cfg.n_a).map(change).sum::<f64>() / cfg.n_a as f64;
            let mb = (cfg.n_a..cfg.n_a + cfg.n_b).map(change).sum::<f64>() / cfg.n_b as f64;
            if d.truth_interaction[v] {
                inside += ma - mb;
                exp_inside += expected[v] as f64;
                n_in += 1;
            } else {
                outside += ma - mb;
                n_out += 1;
            }
        }
        let (inside, exp_inside, outside) = (inside / n_in as f64, exp_inside / n_in as f64, outside / n_out as f64);
        eprintln!("A-B change: inside truth {inside:.3} (expected {exp_inside:.3}), outside {outside:.4}");
        assert!((inside - exp_inside).abs() < 0.3 && inside > 0.4, "inside {inside}, expected {exp_inside}");
        assert!(outside.abs() < 0.03, "outside {outside}");
    }

    #[test]
    fn writes_a_readable_dataset() {
        use nifti::{IntoNdArray, NiftiObject};
        let d = simulate(&small(2, 1, 9));
        let dir = voxflip_testkit::tempdir().unwrap();
        let out = dir.path().join("sim");
        let written = write_dataset(&d, &out).unwrap();
        assert_eq!(written.len(), 10);
        let regions = std::fs::read_to_string(out.join("regions.tsv")).unwrap();
        assert!(regions.starts_with("index\tname\n1\tmedial orbitofrontal cortex\n"), "{regions}");
        assert!(written.iter().all(|p| p.is_file()));
        let tsv = std::fs::read_to_string(out.join("participants.tsv")).unwrap();
        assert_eq!(tsv, "participant_id\tgroup\nsub-01\tcompassion\nsub-02\tcompassion\nsub-03\tmemory\n");
        let readme = std::fs::read_to_string(out.join("README.txt")).unwrap();
        assert!(readme.contains("ventral tegmental area") && readme.contains("seed 9"));

        let obj = nifti::ReaderOptions::new().read_file(out.join("pre.nii.gz")).unwrap();
        let h = obj.header().clone();
        assert_eq!(&h.dim[..5], &[4, 46, 55, 46, 3]);
        assert_eq!((h.sform_code, h.qform_code), (4, 4));
        assert_eq!(h.srow_x, [-4.0, 0.0, 0.0, 90.0]);
        assert_eq!(h.srow_z, [0.0, 0.0, 4.0, -72.0]);
        // x flip: qfac -1 with a 180 degree turn about y, i.e. the same matrix as the sform.
        assert_eq!((h.pixdim[0], h.quatern_b, h.quatern_c, h.quatern_d), (-1.0, 0.0, 1.0, 0.0));
        let arr = obj.into_volume().into_ndarray::<f32>().unwrap();
        let nvox = d.nvox();
        for &(i, j, k, s) in &[(23, 30, 20, 0), (10, 27, 25, 2), (30, 12, 30, 1)] {
            let v = i + 46 * (j + 55 * k);
            assert_eq!(arr[[i, j, k, s]], d.pre[s * nvox + v]);
        }
    }

    /// Timing of the full-size dataset; run by hand:
    /// `cargo test --release --lib simulate::tests::time_2mm -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_2mm() {
        let t = std::time::Instant::now();
        let d = simulate(&SimConfig::default());
        let dt = t.elapsed();
        eprintln!(
            "2 mm, {} subjects x 2 sessions, {} in-mask voxels, {} threads: {:.2} s; truth voxels: interaction {}, activation {}",
            d.n_subjects(),
            count(&d.mask),
            rayon::current_num_threads(),
            dt.as_secs_f64(),
            count(&d.truth_interaction),
            count(&d.truth_activation)
        );
        let dir = voxflip_testkit::tempdir().unwrap();
        let t = std::time::Instant::now();
        write_dataset(&d, dir.path()).unwrap();
        eprintln!("write_dataset: {:.2} s", t.elapsed().as_secs_f64());
    }

    /// How much of the interaction a voxelwise max-T (label permutation) finds at the default
    /// effect sizes, to back the choice of defaults; run by hand:
    /// `cargo test --release --lib simulate::tests::calibrate -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn calibrate_default_detection() {
        use rand::seq::SliceRandom;
        // VOXFLIP_CAL="effect seed" overrides the default size and the seed.
        let env = std::env::var("VOXFLIP_CAL").unwrap_or_default();
        let mut args = env.split_whitespace();
        let mut cfg = SimConfig::default();
        if let (Some(e), Some(s)) = (args.next(), args.next()) {
            (cfg.interaction_effect, cfg.seed) = (e.parse().unwrap(), s.parse().unwrap());
        }
        let d = simulate(&cfg);
        eprintln!("interaction_effect {}, seed {}", cfg.interaction_effect, cfg.seed);
        let nvox = d.nvox();
        let vox: Vec<usize> = (0..nvox).filter(|&v| d.mask[v]).collect();
        let (na, n) = (cfg.n_a, d.n_subjects());
        let nb = n - na;
        // Changes post - pre, subject-major over in-mask voxels.
        let diff: Vec<Vec<f64>> = (0..n)
            .map(|s| vox.iter().map(|&v| (d.post[s * nvox + v] - d.pre[s * nvox + v]) as f64).collect())
            .collect();
        let total: Vec<f64> = (0..vox.len()).map(|i| diff.iter().map(|x| x[i]).sum()).collect();
        let total_ss: Vec<f64> = (0..vox.len()).map(|i| diff.iter().map(|x| x[i] * x[i]).sum()).collect();
        let tmap = |in_a: &[usize]| -> Vec<f64> {
            let mut sa = vec![0.0; vox.len()];
            for &s in in_a {
                sa.iter_mut().zip(&diff[s]).for_each(|(a, x)| *a += x);
            }
            (0..vox.len())
                .map(|i| {
                    let (ma, mb) = (sa[i] / na as f64, (total[i] - sa[i]) / nb as f64);
                    let ss = total_ss[i] - na as f64 * ma * ma - nb as f64 * mb * mb;
                    let sp2 = ss / (n - 2) as f64;
                    (ma - mb) / (sp2 * (1.0 / na as f64 + 1.0 / nb as f64)).sqrt()
                })
                .collect()
        };
        let observed = tmap(&(0..na).collect::<Vec<_>>());
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let mut labels: Vec<usize> = (0..n).collect();
        let mut maxima: Vec<f64> = (0..500)
            .map(|_| {
                labels.shuffle(&mut rng);
                tmap(&labels[..na]).into_iter().fold(f64::MIN, f64::max)
            })
            .collect();
        maxima.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let thr = maxima[(0.95 * maxima.len() as f64) as usize];
        let truth: Vec<bool> = vox.iter().map(|&v| d.truth_interaction[v]).collect();
        let hit = |want: bool| (0..vox.len()).filter(|&i| truth[i] == want && observed[i] > thr).count();
        let n_truth = truth.iter().filter(|&&b| b).count();
        eprintln!(
            "max-T 95% threshold {thr:.2}; truth voxels found {} / {}; false positives {}; peak t in truth {:.2}",
            hit(true),
            n_truth,
            hit(false),
            (0..vox.len()).filter(|&i| truth[i]).map(|i| observed[i]).fold(f64::MIN, f64::max)
        );
        for r in &INTERACTION_REGIONS {
            let inside: Vec<usize> = (0..vox.len())
                .filter(|&i| {
                    let [nx, ny, _] = d.dims;
                    let p = anatomy::voxel_to_mm(&d.affine, vox[i] % nx, vox[i] / nx % ny, vox[i] / (nx * ny));
                    (0..3).map(|a| (p[a] - r.centre_mm[a]).powi(2)).sum::<f64>().sqrt() < r.radius_mm
                })
                .collect();
            let found = inside.iter().filter(|&&i| observed[i] > thr).count();
            let peak = inside.iter().map(|&i| observed[i]).fold(f64::MIN, f64::max);
            eprintln!("  {:<30} {found:>4} / {:>4} voxels, peak t {peak:.2}", r.name, inside.len());
        }
    }
}
