//! The simulated brain: grid geometry, a brain-shaped mask made of smooth solids in MNI
//! space, and the regions that carry the true effects.
//!
//! Everything is defined in MNI millimetres and sampled at voxel centres through the
//! affine, so the 2 mm and 4 mm grids show the same brain.

/// Voxel grid of the simulated images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimGrid {
    /// MNI152 2 mm: 91 x 109 x 91 (the grid most group analyses run on).
    Mni2mm,
    /// MNI 4 mm: 46 x 55 x 46, same field of view, 1/8 of the voxels; for quick runs and tests.
    Small,
}

impl SimGrid {
    pub fn dims(self) -> [usize; 3] {
        match self {
            SimGrid::Mni2mm => [91, 109, 91],
            SimGrid::Small => [46, 55, 46],
        }
    }

    pub fn voxel_mm(self) -> f64 {
        match self {
            SimGrid::Mni2mm => 2.0,
            SimGrid::Small => 4.0,
        }
    }

    pub fn pixdim(self) -> [f32; 3] {
        [self.voxel_mm() as f32; 3]
    }

    /// Voxel (i, j, k) -> MNI mm, radiological-convention x flip as in FSL's templates.
    pub fn affine(self) -> [[f64; 4]; 3] {
        let s = self.voxel_mm();
        [[-s, 0.0, 0.0, 90.0], [0.0, s, 0.0, -126.0], [0.0, 0.0, s, -72.0]]
    }
}

/// MNI mm of the centre of voxel (i, j, k).
pub fn voxel_to_mm(affine: &[[f64; 4]; 3], i: usize, j: usize, k: usize) -> [f64; 3] {
    let v = [i as f64, j as f64, k as f64];
    let mut out = [0.0; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = affine[r][0] * v[0] + affine[r][1] * v[1] + affine[r][2] * v[2] + affine[r][3];
    }
    out
}

/// Call `f(index, mm)` for every voxel, x fastest.
fn for_each_voxel(dims: [usize; 3], affine: &[[f64; 4]; 3], mut f: impl FnMut(usize, [f64; 3])) {
    let mut idx = 0;
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                f(idx, voxel_to_mm(affine, i, j, k));
                idx += 1;
            }
        }
    }
}

/// Superellipsoid |dx/a|^p + |dy/b|^p + |dz/c|^p <= 1 (p = 2: an ellipsoid).
fn in_superellipsoid(p: [f64; 3], centre: [f64; 3], semi: [f64; 3], exponent: f64) -> bool {
    (0..3).map(|a| ((p[a] - centre[a]) / semi[a]).abs().powf(exponent)).sum::<f64>() <= 1.0
}

/// Whether MNI point `p` (mm) is inside the simulated brain.
///
/// The solids were tuned so that the MNI 2 mm grid holds about 228,000 voxels, the size of
/// FSL's MNI152_T1_2mm_brain_mask (228,483), so that timings and the multiple-comparison
/// burden match a real whole-brain analysis:
/// - cerebrum: a superellipsoid (exponent 2.4, squarer than an ellipsoid like a real
///   cerebrum), x +-68.5, y -103..+69, z -47..+77, with the orbitofrontal base flattened at
///   z = -30 in front of y = 0;
/// - cerebellum: an ellipsoid under the occipital lobe, centre (0, -60, -36);
/// - brainstem: an upright ellipsoid from the pons down to the bottom of the grid (z = -72).
pub fn in_brain(p: [f64; 3]) -> bool {
    let cerebrum = in_superellipsoid(p, [0.0, -17.0, 15.0], [68.5, 86.0, 62.0], 2.4) && !(p[1] > 0.0 && p[2] < -30.0);
    let cerebellum = in_superellipsoid(p, [0.0, -60.0, -36.0], [48.0, 26.0, 20.0], 2.0);
    let brainstem = in_superellipsoid(p, [0.0, -28.0, -38.0], [13.0, 14.0, 36.0], 2.0);
    cerebrum || cerebellum || brainstem
}

/// The brain mask on a grid (x fastest).
pub fn brain_mask(grid: SimGrid) -> Vec<bool> {
    let dims = grid.dims();
    let mut mask = vec![false; dims.iter().product()];
    for_each_voxel(dims, &grid.affine(), |v, p| mask[v] = in_brain(p));
    mask
}

/// A region that carries a true effect: a sphere in MNI mm with a smooth edge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    pub name: &'static str,
    pub centre_mm: [f64; 3],
    /// Outer radius: the effect is zero from here on.
    pub radius_mm: f64,
}

const fn region(name: &'static str, centre_mm: [f64; 3], radius_mm: f64) -> Region {
    Region { name, centre_mm, radius_mm }
}

/// Present in both sessions of every subject (the task's usual network): a positive
/// control that any analysis of the session means should find.
pub const ACTIVATION_REGIONS: [Region; 3] = [
    region("left anterior insula", [-38.0, 18.0, 0.0], 8.0),
    region("right anterior insula", [38.0, 18.0, 0.0], 8.0),
    region("anterior midcingulate cortex", [0.0, 20.0, 38.0], 8.0),
];

/// Where group A's post maps increase relative to pre (the group-by-time interaction):
/// the reward / affiliation circuit that compassion training is thought to engage.
/// Pallidum and VTA are small structures, so their spheres are smaller. Each sphere is
/// farther from every activation sphere than the sum of their radii (the closest pair,
/// putamen and anterior insula, 18.5 mm > 15 mm), so the two truths never touch.
pub const INTERACTION_REGIONS: [Region; 6] = [
    region("medial orbitofrontal cortex", [0.0, 42.0, -16.0], 8.0),
    region("left putamen", [-24.0, 6.0, 2.0], 7.0),
    region("right putamen", [24.0, 6.0, 2.0], 7.0),
    region("left pallidum", [-18.0, -4.0, -2.0], 5.0),
    region("right pallidum", [18.0, -4.0, -2.0], 5.0),
    region("ventral tegmental area", [0.0, -16.0, -12.0], 5.0),
];

/// Fraction of the outer radius over which a region carries its full effect; beyond it the
/// effect falls to zero along a raised cosine, so effects have smooth edges like real
/// activations while the truth (effect > 0) stays a well-defined sphere.
pub const PLATEAU_FRACTION: f64 = 0.6;

/// Effect profile of a region at distance `d` mm from its centre: 1 on the plateau, a
/// raised cosine down to 0 at the radius, 0 beyond.
pub fn profile(region: &Region, d: f64) -> f64 {
    let r0 = PLATEAU_FRACTION * region.radius_mm;
    if d <= r0 {
        1.0
    } else if d < region.radius_mm {
        0.5 * (1.0 + (std::f64::consts::PI * (d - r0) / (region.radius_mm - r0)).cos())
    } else {
        0.0
    }
}

/// Effect map (x fastest): `size` times the largest profile over `regions` (the maximum, not
/// the sum, so touching spheres such as putamen and pallidum do not double up), zero outside
/// the mask.
pub fn effect_map(grid: SimGrid, mask: &[bool], regions: &[Region], size: f32) -> Vec<f32> {
    let dims = grid.dims();
    let mut map = vec![0.0f32; dims.iter().product()];
    for_each_voxel(dims, &grid.affine(), |v, p| {
        if mask[v] {
            let w = regions
                .iter()
                .map(|r| {
                    let d = (0..3).map(|a| (p[a] - r.centre_mm[a]).powi(2)).sum::<f64>().sqrt();
                    profile(r, d)
                })
                .fold(0.0, f64::max);
            map[v] = (w * size as f64) as f32;
        }
    });
    map
}

/// Truth mask of an effect: the in-mask voxels where the regions' profile is nonzero
/// (independent of the effect size, so a zero-size run still reports where the effect would be).
pub fn truth_mask(grid: SimGrid, mask: &[bool], regions: &[Region]) -> Vec<bool> {
    effect_map(grid, mask, regions, 1.0).iter().map(|&w| w > 0.0).collect()
}

/// Every planted region, interaction first: region k carries label k + 1 in
/// [`region_labels`].
pub fn planted_regions() -> Vec<Region> {
    INTERACTION_REGIONS.iter().chain(&ACTIVATION_REGIONS).copied().collect()
}

/// A label image of the planted regions (x fastest): at each in-mask voxel, k + 1 for the
/// region k of [`planted_regions`] whose effect profile is largest there, 0 where none
/// reaches.
pub fn region_labels(grid: SimGrid, mask: &[bool]) -> Vec<f32> {
    let regions = planted_regions();
    let mut labels = vec![0f32; mask.len()];
    for_each_voxel(grid.dims(), &grid.affine(), |v, p| {
        if !mask[v] {
            return;
        }
        let mut best = (0.0, 0usize);
        for (k, r) in regions.iter().enumerate() {
            let d = (0..3).map(|a| (p[a] - r.centre_mm[a]).powi(2)).sum::<f64>().sqrt();
            let w = profile(r, d);
            if w > best.0 {
                best = (w, k + 1);
            }
        }
        labels[v] = best.1 as f32;
    });
    labels
}

/// A skull-stripped, T1-like picture of the simulated brain, for the report's background:
/// white matter bright inside a shrunken cerebrum, cortex grey around it, dark lateral
/// ventricles, cerebellum and brainstem in between; 0 outside the brain.
pub fn synthetic_t1(grid: SimGrid) -> Vec<f32> {
    let dims = grid.dims();
    let mut img = vec![0f32; dims.iter().product()];
    for_each_voxel(dims, &grid.affine(), |v, p| {
        if !in_brain(p) {
            return;
        }
        let white = in_superellipsoid(p, [0.0, -17.0, 15.0], [56.0, 72.0, 48.0], 2.4);
        let ventricle = [-9.0, 9.0].iter().any(|&x| in_superellipsoid(p, [x, -8.0, 14.0], [5.0, 22.0, 8.0], 2.0));
        let below = in_superellipsoid(p, [0.0, -60.0, -36.0], [48.0, 26.0, 20.0], 2.0)
            || in_superellipsoid(p, [0.0, -28.0, -38.0], [13.0, 14.0, 36.0], 2.0);
        img[v] = if ventricle {
            25.0
        } else if white && !below {
            110.0
        } else if below {
            85.0
        } else {
            65.0
        };
    });
    img
}
