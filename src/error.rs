//! The binary's error: every failure a user can meet, as one line (`main` prints it after
//! "voxflip: error: " and exits with 2).
use std::path::Path;
use voxflip_engines::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file or an output (names the file).
    #[error(transparent)]
    Io(#[from] voxflip_io::Error),
    /// The command line or the combination of inputs.
    #[error("{0}")]
    Usage(String),
    /// An engine that could not do the work (and had no other path).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Io(voxflip_io::Error::input(path, msg))
    }
    pub fn output(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Io(voxflip_io::Error::output(path, msg))
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
}
