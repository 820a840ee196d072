//! `voxflip interaction`: the driving study's group-by-time interaction, post - pre per
//! subject, two groups, sign flips.
use super::read_mask;
use crate::cli::InteractionArgs;
use crate::error::{Error, Result};
use crate::pipeline;
use crate::summary::print_outcome;
use std::path::PathBuf;
use voxflip_io::Dataset;
use voxflip_stats::{Design, PermKind};

/// Load --pre/--post as 4D files or per-subject patterns, in participants.tsv order.
fn load_session(spec: &str, ids: &[String]) -> Result<(voxflip_io::Image, PathBuf)> {
    if spec.contains("{participant_id}") {
        let mut paths = Vec::with_capacity(ids.len());
        for id in ids {
            let p = PathBuf::from(spec.replace("{participant_id}", id));
            let p = voxflip_io::resolve_image(&p).map_err(|e| match e {
                voxflip_io::Error::Input { path, msg } => Error::input(path, format!("{msg}, for participant {id}")),
                other => other.into(),
            })?;
            paths.push(p);
        }
        Ok((voxflip_io::dataset::read_stack(&paths)?, PathBuf::from(spec)))
    } else {
        let p = voxflip_io::resolve_image(&PathBuf::from(spec))?;
        let img = voxflip_io::read_image(&p)?;
        if img.nvol != ids.len() {
            return Err(Error::input(
                &p,
                format!("has {} volumes but participants.tsv lists {} participants (one volume per participant, in that order)", img.nvol, ids.len()),
            ));
        }
        Ok((img, p))
    }
}

pub fn run(a: &InteractionArgs, args: &[String]) -> Result<()> {
    let prefix = a.common.out()?;
    let variance_smoothing = a.variance_smoothing.as_deref().map(super::glm::parse_smoothing).transpose()?;
    let parts = voxflip_io::read_participants(&a.participants, &a.group_column)?;
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
            format!(
                "column '{}' has {} groups ({}); the interaction needs exactly two (or name them with --groups)",
                a.group_column,
                levels.len(),
                levels.join(", ")
            ),
        ));
    }
    let mut groups = Vec::with_capacity(parts.ids.len());
    for (id, g) in parts.ids.iter().zip(&parts.groups) {
        match names.iter().position(|n| n == g) {
            Some(k) => groups.push(k),
            None => {
                return Err(Error::input(
                    &a.participants,
                    format!("participant {id} is in group '{g}', which is not one of {}", names.join(", ")),
                ))
            }
        }
    }
    for (k, name) in names.iter().enumerate() {
        let c = groups.iter().filter(|&&g| g == k).count();
        if c < 2 {
            return Err(Error::input(
                &a.participants,
                format!("group '{name}' has {c} participant(s); at least 2 are needed"),
            ));
        }
    }
    let read_start = std::time::Instant::now();
    // Both sessions at once: a 4D .nii.gz from another tool inflates as one stream each.
    let (pre, post) = rayon::join(|| load_session(&a.pre, &parts.ids), || load_session(&a.post, &parts.ids));
    let ((pre, pre_path), (post, post_path)) = (pre?, post?);
    let diff = voxflip_io::dataset::difference(&pre, &pre_path, &post, &post_path)?;
    drop((pre, post));
    let mask_path = a.common.mask.as_deref().map(voxflip_io::resolve_image).transpose()?;
    let mask = read_mask(&mask_path)?;
    let mut ds =
        Dataset::from_image_with(&diff, &post_path, mask.as_ref().zip(mask_path.as_deref()), a.common.keep_constant)?;
    super::report_constant_voxels(&ds);
    ds.read_seconds = read_start.elapsed().as_secs_f64();
    drop(diff);
    let design = Design::group_by_time(&groups, &[names[0].clone(), names[1].clone()]);
    let (kind, reason) = if a.permute {
        (PermKind::Permute, "group labels exchanged (--permute)".to_string())
    } else {
        (PermKind::SignFlip, "sign flips of post - pre (Freedman-Lane, group means as nuisance)".to_string())
    };
    let mut opts = a.common.analysis_options(kind, reason, args)?;
    opts.vox_corrp = true;
    // With --permute, the time effect (tstat3, a mean) is still sign-flipped: exchanging
    // group labels cannot test a mean.
    opts.flip_constant_contrasts = true;
    opts.variance_smoothing = variance_smoothing;
    if let Some(inquiry) = a.common.inquiry() {
        print!("{}", crate::permutations::answer(inquiry, &design, &opts, ds.n, &prefix)?);
        return Ok(());
    }
    let outcome = pipeline::run(&ds, &design, &opts, &prefix)?;
    print_outcome(&outcome, opts.quiet);
    Ok(())
}
