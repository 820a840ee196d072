//! The randomise-style general GLM: `voxflip -i 4D -d design.mat -t design.con ...`.
use super::read_mask;
use crate::cli::GlmArgs;
use crate::error::{Error, Result};
use crate::permutations;
use crate::pipeline;
use crate::summary::print_outcome;
use std::path::Path;
use voxflip_io::{Dataset, Vest};
use voxflip_stats::design::Matrix;
use voxflip_stats::{Blocks, ConfoundMethod, Design, DesignError, PermKind, StatKind};

pub fn run(g: &GlmArgs, args: &[String]) -> Result<()> {
    if g.variance_smoothing.is_some() && (g.voxelwise_evs.is_some() || g.voxelwise_ev_files.is_some()) {
        return Err(Error::usage(
            "-v (variance smoothing) with --vxl/--vxf (voxelwise regressors) is not supported: use one of them",
        ));
    }
    let voxelwise = voxelwise_flags(g)?;
    if g.film {
        return Err(Error::usage(
            "--film (randomise's FEAT-style names: cope1, pe1, z maps) is not supported: run without it; --glm_output writes pe, cope, varcope and sigmasqr",
        ));
    }
    let variance_smoothing = g.variance_smoothing.as_deref().map(parse_smoothing).transpose()?;
    let confound = g.confound.map(ConfoundMethod::from_randomise).transpose().map_err(Error::usage)?;
    refuse_unsupported(g)?;
    let input =
        g.input.as_ref().ok_or_else(|| Error::usage("no input: give -i 4D.nii.gz (or a subcommand; see --help)"))?;
    let prefix = g.common.out()?;
    check_f_tests(g)?;
    // FSL's names: `-i data -m mask` read data.nii.gz and mask.nii.gz (or .nii).
    let input = &voxflip_io::resolve_image(input)?;
    let mask_path = g.common.mask.as_deref().map(voxflip_io::resolve_image).transpose()?;
    let read_start = std::time::Instant::now();
    let img = voxflip_io::read_image(input)?;
    let mask = read_mask(&mask_path)?;
    let mut ds =
        Dataset::from_image_with(&img, input, mask.as_ref().zip(mask_path.as_deref()), g.common.keep_constant)?;
    super::report_constant_voxels(&ds);
    ds.read_seconds = read_start.elapsed().as_secs_f64();
    drop(img);
    let mut design = match (&g.design, &g.contrasts) {
        (Some(d), Some(t)) => read_design(d, t, g.fts.as_deref(), ds.n)?,
        (None, None) if g.one_sample => Design::one_sample(ds.n),
        (None, None) => {
            return Err(Error::usage("no design: give -d design.mat -t design.con, or -1 for a one-sample test"))
        }
        _ => return Err(Error::usage("-d and -t go together")),
    };
    if let Some(mat) = &g.design {
        // Once per run, naming the file as given (-D may reorder columns: before it).
        if let Some(warning) = design.rank_warning(&mat.display().to_string()) {
            log::info!("{warning}");
        }
    }
    if g.f_only {
        if g.fts.is_none() {
            return Err(Error::usage("--fonly needs F-tests: give -f design.fts"));
        }
        design = design.f_tests_only();
    }
    if g.skip_to > 0 {
        design = only_contrast(design, g.skip_to)?;
    }
    if let Some((cols, _)) = &voxelwise {
        check_voxelwise_columns(g, cols, design.m.ncols())?;
    }
    if g.demean {
        let mat = g.design.as_deref().unwrap_or(Path::new("design"));
        design = design.demeaned().map_err(|e| design_error(e, mat, mat, mat))?;
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
    let mut opts = g.common.analysis_options(kind, reason, args)?;
    opts.blocks = read_blocks(g, ds.n)?;
    // randomise's default: permute rows, but sign-flip a test of the mean.
    opts.flip_constant_contrasts = g.perm_kind.is_none();
    opts.confound = confound.unwrap_or_default();
    if opts.confound != ConfoundMethod::FreedmanLane {
        log::info!("confounds: {}", opts.confound.words());
    }
    opts.glm_output = g.glm_output;
    opts.permout = g.permout;
    opts.variance_smoothing = variance_smoothing;
    if let Some(path) = &g.effective_design {
        opts.effective_design = Some(permutations::effective_design(&voxflip_io::read_design(path)?, path, ds.n)?);
    }
    opts.detect_null = g.detect_null;
    if let Some((cols, files)) = voxelwise {
        set_voxelwise(&mut opts, &ds, cols, files)?;
    }
    if let Some(inquiry) = g.common.inquiry() {
        print!("{}", permutations::answer(inquiry, &design, &opts, ds.n, &prefix)?);
        return Ok(());
    }
    let outcome = pipeline::run(&ds, &design, &opts, &prefix)?;
    print_outcome(&outcome, opts.quiet);
    Ok(())
}

/// `-f` before any image is read: an F test is built from the t contrasts of -t, so -f
/// without -t (e.g. with -1, or PALM's `-fdr`, which reads as `-f dr`) is refused rather
/// than ignored, and so is a file that does not exist.
fn check_f_tests(g: &GlmArgs) -> Result<()> {
    let Some(fts) = &g.fts else { return Ok(()) };
    if g.contrasts.is_none() {
        return Err(Error::usage(format!(
            "-f {}: F tests combine the t contrasts of -t design.con, and none was given (PALM's -fdr is not a voxflip flag)",
            fts.display()
        )));
    }
    if !fts.is_file() {
        return Err(Error::input(fts, "no such file (-f)"));
    }
    Ok(())
}

/// `-v STD`: a positive, finite number of mm.
pub(crate) fn parse_smoothing(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(Error::usage(format!(
            "-v {text}: the variance smoothing std must be a positive number of mm (randomise -v)"
        ))),
    }
}

/// randomise options voxflip does not implement, refused before any work in one line.
fn refuse_unsupported(g: &GlmArgs) -> Result<()> {
    if g.twopass {
        return Err(Error::usage(
            "--twopass (randomise's cluster normalisation: a second pass over every permutation that divides \
             each voxel's cluster size or TFCE by its mean over the first pass) is not supported: run without it",
        ));
    }
    if g.multi.is_some() {
        return Err(Error::usage(
            "--multi (randomise's beta multivariate mode, vertices x dimensions x subjects) is not supported",
        ));
    }
    if g.detect_null && g.permute_blocks {
        return Err(Error::usage(
            "--detectNull with --permuteBlocks: rows cannot stay in place when whole blocks are exchanged",
        ));
    }
    Ok(())
}

/// randomise's --skipTo N: only contrast N, F-tests numbered first, then t contrasts.
fn only_contrast(design: Design, n: usize) -> Result<Design> {
    let nf = design.contrasts.iter().filter(|c| c.kind == StatKind::F).count();
    let nt = design.contrasts.iter().filter(|c| c.kind == StatKind::T).count();
    let name = if n <= nf { format!("fstat{n}") } else { format!("tstat{}", n - nf) };
    if !design.contrasts.iter().any(|c| c.name == name) {
        return Err(Error::usage(format!(
            "--skipTo {n}: there are {nf} F-test(s) (numbered first) and {nt} t contrast(s), so 1 to {}",
            nf + nt
        )));
    }
    Ok(design.keep_contrasts(|c| c.name == name))
}

/// design.mat, design.con and optionally design.fts, as a validated design for `n` images.
fn read_design(mat: &Path, con: &Path, fts: Option<&Path>, n: usize) -> Result<Design> {
    let dm = voxflip_io::read_design(mat)?;
    let cm = voxflip_io::read_contrasts(con)?;
    let fm = fts.map(voxflip_io::read_fts).transpose()?;
    let labels = [mat, con, fts.unwrap_or(con)].map(|p| p.display().to_string());
    fn matrix<'a>(v: &'a Vest, label: &'a str) -> Matrix<'a> {
        Matrix { label, rows: &v.rows, ncols: v.ncols, names: &v.names }
    }
    let f = fm.as_ref().map(|v| matrix(v, &labels[2]));
    Design::from_matrices(n, &matrix(&dm, &labels[0]), &matrix(&cm, &labels[1]), f.as_ref())
        .map_err(|e| design_error(e, mat, con, fts.unwrap_or(con)))
}

/// A design error as an input error naming the file at fault.
fn design_error(e: DesignError, mat: &Path, con: &Path, fts: &Path) -> Error {
    match e {
        DesignError::Design(m) => Error::input(mat, m),
        DesignError::Contrasts(m) => Error::input(con, m),
        DesignError::FTests(m) => Error::input(fts, m),
    }
}

/// Exchangeability blocks from -e (and --permuteBlocks), checked against the input's volumes.
fn read_blocks(g: &GlmArgs, n: usize) -> Result<Option<Blocks>> {
    let Some(path) = &g.blocks else {
        if g.permute_blocks {
            return Err(Error::usage("--permuteBlocks needs exchangeability blocks: give -e design.grp"));
        }
        return Ok(None);
    };
    let labels = voxflip_io::read_grp(path)?;
    if labels.len() != n {
        return Err(Error::input(
            path,
            format!("{} rows, but the input has {n} volumes (one block number per volume)", labels.len()),
        ));
    }
    Blocks::from_labels(&labels, g.permute_blocks).map(Some).map_err(|e| Error::input(path, e))
}

/// --vxl and --vxf as typed: randomise's comma-separated lists (`--vxl=3,4 --vxf=a,b` or
/// `--vxl 3 --vxf a`), the columns numbered from 1, one file per column; checked before any
/// image is read.
fn voxelwise_flags(g: &GlmArgs) -> Result<Option<(Vec<usize>, Vec<String>)>> {
    let (cols, files) = match (&g.voxelwise_evs, &g.voxelwise_ev_files) {
        (None, None) => return Ok(None),
        (Some(c), Some(f)) => (c, f),
        (Some(_), None) => return Err(Error::usage("--vxl needs --vxf: the 4D images of the voxelwise regressors")),
        (None, Some(_)) => return Err(Error::usage("--vxf needs --vxl: the design columns the images replace")),
    };
    let cols: Vec<usize> = cols
        .split(',')
        .map(|c| match c.trim().parse::<usize>() {
            Ok(k) if k >= 1 => Ok(k),
            _ => Err(Error::usage(format!(
                "--vxl {cols}: '{c}' is not a design column number (columns are numbered from 1)"
            ))),
        })
        .collect::<Result<_>>()?;
    let files: Vec<String> = files.split(',').map(|f| f.trim().to_string()).collect();
    if files.iter().any(String::is_empty) {
        return Err(Error::usage(format!("--vxf {}: an empty file name in the list", files.join(","))));
    }
    if cols.len() != files.len() {
        return Err(Error::usage(format!(
            "--vxl names {} column(s) but --vxf {} image(s): one image per column, in the same order",
            cols.len(),
            files.len()
        )));
    }
    if let Some(k) = cols.iter().enumerate().find_map(|(i, k)| cols[..i].contains(k).then_some(k)) {
        return Err(Error::usage(format!("--vxl: column {k} is named twice")));
    }
    if g.demean {
        return Err(Error::usage(
            "--vxl with -D is not supported: -D changes the design's columns (and so their numbers); \
             demean the data and the design.mat columns yourself",
        ));
    }
    if g.glm_output {
        return Err(Error::usage("--glm_output with --vxl is not supported: the GLM maps would differ per voxel"));
    }
    Ok(Some((cols, files)))
}

/// The --vxl columns against the design's.
fn check_voxelwise_columns(g: &GlmArgs, cols: &[usize], ncols: usize) -> Result<()> {
    match cols.iter().find(|&&k| k > ncols) {
        Some(k) => {
            let mat = g.design.as_deref().unwrap_or(Path::new("the design"));
            Err(Error::usage(format!(
                "--vxl {k}: {} has {ncols} column(s); a voxelwise regressor replaces one of them",
                mat.display()
            )))
        }
        None => Ok(()),
    }
}

/// Reads the --vxf images (FSL names allowed) on the data's grid and mask. Both engines have
/// the per-voxel path (the GPU's glm_stat_voxelwise shader, the CPU engine's voxelwise tiles).
fn set_voxelwise(
    opts: &mut crate::options::AnalysisOptions,
    ds: &Dataset,
    cols: Vec<usize>,
    files: Vec<String>,
) -> Result<()> {
    let mut values = Vec::with_capacity(files.len());
    let mut sources = Vec::with_capacity(files.len());
    for (&k, f) in cols.iter().zip(&files) {
        let path = voxflip_io::resolve_image(Path::new(f))?;
        let img = voxflip_io::read_image(&path)?;
        values.push(ds.values_of(&img, &path)?);
        sources.push((k, path));
    }
    let columns = cols.iter().map(|k| k - 1).collect();
    opts.voxelwise = Some(std::sync::Arc::new(voxflip_stats::VoxelwiseEvs { columns, values }));
    opts.voxelwise_sources = sources;
    Ok(())
}
