//! `voxflip example`: simulate the driving study and analyse it end to end (the README's
//! first command), then say what the outputs show against the planted truth.
use crate::cli::{CommonArgs, ExampleArgs, InteractionArgs, SpatialArgs};
use crate::error::{Error, Result};
use std::path::Path;

pub fn run(a: &ExampleArgs, args: &[String]) -> Result<()> {
    let cfg = voxflip_simulate::SimConfig { grid: super::simulate::parse_grid(&a.grid)?, ..Default::default() };
    let data_dir = a.dir.join("data");
    if !a.quiet {
        eprintln!(
            "voxflip: simulating the study ({} and {} subjects, pre and post) into {}",
            cfg.n_a,
            cfg.n_b,
            data_dir.display()
        );
    }
    let sim = voxflip_simulate::simulate(&cfg);
    voxflip_simulate::write_dataset(&sim, &data_dir)?;
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
        variance_smoothing: None,
        common: CommonArgs {
            out: Some(prefix.clone()),
            mask: Some(data_dir.join("mask.nii.gz")),
            keep_constant: false,
            n_perm: a.n_perm,
            vox_corrp: true,
            uncorrp: false,
            seed: 0,
            logp: false,
            save_null: false,
            raw_stats: false,
            verbose: false,
            quiet: a.quiet,
            count_permutations: false,
            parallel_info: false,
            perm_vectors: false,
            backend: a.backend,
            adapter: None,
            with_cpu: false,
            product: Default::default(),
            no_shared_contrasts: false,
            spatial: SpatialArgs { tfce: a.tfce, ..Default::default() },
            gpu: Default::default(),
            distribution: Default::default(),
            // The simulator's own label image of the regions it planted, and its T1-like
            // picture of the simulated brain, so the report names regions on any machine.
            report: crate::cli::ReportArgs {
                no_report: false,
                background: Some(data_dir.join("anatomy.nii.gz")),
                atlas: vec![data_dir.join("regions.nii.gz").display().to_string()],
            },
        },
    };
    super::interaction::run(&ia, args)?;
    // What the outputs show, against the truth the simulator planted.
    let truth = voxflip_io::read_image(&data_dir.join("truth_interaction.nii.gz"))?;
    let true_n = truth.data.iter().filter(|&&t| t > 0.0).count();
    let against_truth = |map: &str| -> Result<(usize, usize)> {
        let corrp = voxflip_io::read_image(Path::new(&format!("{prefix}_{map}_tstat1")))?;
        let sig: Vec<bool> = corrp.data.iter().map(|&x| x >= 0.95).collect();
        let hits = sig.iter().zip(&truth.data).filter(|(&s, &t)| s && t > 0.0).count();
        let false_pos = sig.iter().zip(&truth.data).filter(|(&s, &t)| s && t <= 0.0).count();
        Ok((hits, false_pos))
    };
    let (hits, false_pos) = against_truth("vox_corrp")?;
    println!("\nResults in {}:", results.display());
    println!(
        "  interaction_tstat1.nii.gz          t map, {} > {} in post - pre",
        sim.groups[0],
        sim.groups.iter().find(|g| **g != sim.groups[0]).cloned().unwrap_or_default()
    );
    println!("  interaction_vox_corrp_tstat1.nii.gz  1 - FWE-corrected p (>= 0.95 is significant at 0.05)");
    println!(
        "  tstat2: the other direction; tstat3: time effect across all subjects; interaction_voxflip.json: provenance"
    );
    println!("Against the simulated truth (data/truth_interaction.nii.gz):");
    println!("  voxelwise max-T: {hits} of {true_n} true-effect voxels significant (FWE 0.05), {false_pos} significant voxels outside the true effect");
    if a.tfce {
        let (hits, false_pos) = against_truth("tfce_corrp")?;
        println!("  TFCE:            {hits} of {true_n} true-effect voxels significant (FWE 0.05), {false_pos} significant voxels outside the true effect");
        println!("  (TFCE spreads support to the effect's tapered edges; its FWE control is per image, so voxels just outside a true blob can be significant.)");
    }
    println!("  interaction_clusters_tstat1.tsv / _lmax_tstat1.tsv: the clusters and local maxima in MNI mm, labelled with the planted regions");
    let planted = voxflip_simulate::INTERACTION_REGIONS;
    let regions = voxflip_io::read_image(&data_dir.join("regions.nii.gz"))?;
    let corrp = voxflip_io::read_image(Path::new(&format!("{prefix}_vox_corrp_tstat1")))?;
    let found: Vec<String> = planted
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let n = regions.data.iter().zip(&corrp.data).filter(|(&l, &p)| l as usize == k + 1 && p >= 0.95).count();
            format!("{} {}", r.name, if n > 0 { format!("found ({n} voxels)") } else { "missed".into() })
        })
        .collect();
    println!("  planted interaction regions (voxelwise FWE 0.05): {}", found.join("; "));
    println!("\nReport: {}", crate::report::default_path(&prefix).display());
    Ok(())
}
