//! The one error type of the I/O crate: a file and what is wrong with it, in one line.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with one input file: `{path}: {msg}`.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// Writing an output failed: `{path}: cannot write: {msg}`.
    #[error("{}: cannot write: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn output(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Output { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

/// A short, single-line description of an I/O error.
pub fn io_msg(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "no such file or directory".into(),
        PermissionDenied => "permission denied".into(),
        UnexpectedEof => "unexpected end of file".into(),
        _ => e.to_string().replace('\n', " "),
    }
}
