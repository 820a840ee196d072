//! The sidecar (`{prefix}_voxflip.json`) read back: the report is drawn from it.
use crate::error::{Error, Result};
use crate::summary::RunReport;
use std::path::PathBuf;

/// `{prefix}_voxflip.json`.
pub fn read_sidecar(prefix: &str) -> Result<RunReport> {
    let path = PathBuf::from(format!("{prefix}_voxflip.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::input(&path, format!("no such file: is {prefix} the -o prefix of a finished run?"))
        }
        _ => Error::input(&path, format!("cannot read the run's sidecar ({e})")),
    })?;
    let s: RunReport = serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, format!("not the sidecar of a run of this voxflip version ({e})")))?;
    if s.contrasts.is_empty() {
        return Err(Error::input(&path, "records no contrast"));
    }
    Ok(s)
}
