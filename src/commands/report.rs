//! `voxflip report PREFIX`: a finished run's HTML report, rebuilt from its outputs and
//! sidecar (with the run's background and atlases unless others are given).
use crate::cli::ReportCommandArgs;
use crate::error::{Error, Result};
use crate::report;

pub fn run(a: &ReportCommandArgs) -> Result<()> {
    if let Some(o) = a.out.as_ref().filter(|o| o.as_os_str().to_string_lossy().ends_with('/') || o.is_dir()) {
        return Err(Error::usage(format!(
            "-o {}: a directory; give the report's file name (e.g. -o {}/report.html)",
            o.display(),
            o.display().to_string().trim_end_matches('/')
        )));
    }
    // A run killed while renaming its outputs is finished first, so its sidecar is there.
    crate::outputs::clean_up_after_dead_runs(&a.prefix);
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
