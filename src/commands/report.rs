//! `voxflip report PREFIX`: a finished run's HTML report, rebuilt from its outputs and
//! sidecar (with the run's background and atlases unless others are given).
use crate::cli::ReportCommandArgs;
use crate::error::Result;
use crate::report;

pub fn run(a: &ReportCommandArgs) -> Result<()> {
    let sidecar = report::read_sidecar(&a.prefix)?;
    let mut opts = sidecar.report.clone();
    if a.background.is_some() {
        opts.background = a.background.clone();
    }
    if !a.atlas.is_empty() {
        opts.atlases = a.atlas.clone();
    }
    let path = a.out.clone().unwrap_or_else(|| report::default_path(&a.prefix));
    report::write(&a.prefix, &opts, &path)?;
    if !a.quiet {
        eprintln!("voxflip: report in {}", path.display());
    }
    Ok(())
}
