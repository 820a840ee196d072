//! One error type for the whole tool. Every variant prints as a single line that names
//! the file (where there is one) and says what is wrong, so `main` can print it and exit 2.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with one input file: `{path}: {msg}`.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// A problem with the command line or the combination of inputs.
    #[error("{0}")]
    Usage(String),
    /// The GPU engine could not run (no adapter, device lost, out of memory...).
    #[error("GPU: {0}")]
    Gpu(String),
    /// Writing an output failed.
    #[error("{}: cannot write: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    pub fn output(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Output { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}
