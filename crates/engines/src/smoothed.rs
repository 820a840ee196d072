//! Batches of pseudo-t maps (randomise's `-v`, [`voxflip_stats::smoothing`]) on any engine.
//!
//! The engines' kernels compute a statistic per voxel and permutation inside tiles, while
//! smoothing needs each permutation's whole variance map. So a smoothed batch runs the
//! engine's own kernels twice on the prepared problem, for the maps of t and of F with
//! s = q (F = (|u|^2 / q) / sigma^2, so sigma^2 = ||E||^2 / (dof + q F) without another
//! kernel), smooths each permutation's sigma^2 over the mask on the host, and forms the
//! pseudo-t and the batch's reductions (maxima, exceedance counts, maps) from it. Both
//! engines run exactly this, so their pseudo-t maps differ only as their t and F maps do.
use crate::error::{EngineError, Result};
use crate::{BatchResult, Engine};
use rayon::prelude::*;
use std::ops::Range;
use voxflip_stats::{PermSet, StatKind};

/// Permutations smoothed at once: bounds the host buffers (4 maps of V values each).
pub(crate) const SMOOTHED_BATCH: usize = 64;

/// [`Engine::run_batch`] for a t contrast whose variance `engine` smooths.
pub(crate) fn run_batch(
    engine: &mut Engine,
    perms: &PermSet,
    range: Range<usize>,
    observed: Option<&[f32]>,
    mut maps: Option<&mut [f32]>,
) -> Result<BatchResult> {
    let Some((smoothing, q, dof, ss)) = engine.smoothed().map(|(s, q, d, ss)| (s, q, d, ss.to_vec())) else {
        return Err(EngineError::Invalid("a smoothed batch without smoothing".into()));
    };
    let v = ss.len();
    if smoothing.len() != v {
        return Err(EngineError::Invalid(format!(
            "variance smoothing over {} voxels for a problem of {v}",
            smoothing.len()
        )));
    }
    if observed.is_some_and(|o| o.len() != v) || maps.as_ref().is_some_and(|m| m.len() != range.len() * v) {
        return Err(EngineError::Invalid("observed map or maps buffer of the wrong size".into()));
    }
    let mut out = BatchResult { max_stat: Vec::with_capacity(range.len()), exceed: vec![0; observed.map_or(0, |_| v)] };
    let (mut t, mut f) = (Vec::new(), Vec::new());
    let mut start = range.start;
    while start < range.end {
        let part = start..(start + SMOOTHED_BATCH).min(range.end);
        let b = part.len();
        t.resize(b * v, 0f32);
        f.resize(b * v, 0f32);
        engine.run_raw(perms, part.clone(), None, Some(&mut t))?;
        engine.set_statistic(StatKind::F, q);
        let ran = engine.run_raw(perms, part.clone(), None, Some(&mut f));
        engine.set_statistic(StatKind::T, 1);
        ran?;
        let sigma2: Vec<f64> = f
            .par_chunks(v.max(1))
            .flat_map_iter(|f| f.iter().zip(&ss).map(|(&f, &ss)| ss as f64 / (dof as f64 + q as f64 * f as f64)))
            .collect();
        smoothing.pseudo_t(&mut t, &sigma2);
        for map in t.chunks(v.max(1)).take(b) {
            // As the kernels' maxima: NaN never wins.
            out.max_stat.push(map.iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a }));
            if let Some(o) = observed {
                for ((c, &x), &o) in out.exceed.iter_mut().zip(map).zip(o) {
                    *c += (x >= o) as u32;
                }
            }
        }
        if let Some(m) = maps.as_deref_mut() {
            let at = (start - range.start) * v;
            m[at..at + b * v].copy_from_slice(&t);
        }
        start = part.end;
    }
    Ok(out)
}
