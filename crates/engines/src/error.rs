//! What can go wrong in an engine, typed by what the caller should do about it.

/// An engine's error. The variant says what it is and so what follows:
/// - [`DeviceLost`](EngineError::DeviceLost), [`OutOfMemory`](EngineError::OutOfMemory):
///   the device failed; the scheduler continues on the CPU engine from the batch it reached,
///   and the answer is the same;
/// - [`Unsupported`](EngineError::Unsupported): this adapter cannot run the work asked for
///   (its limits, a feature, more TFCE levels than its passes take); the work takes another
///   path (the CPU);
/// - [`Invalid`](EngineError::Invalid): the input cannot be computed (a user's parameter, a
///   caller's mistake); no engine would do better, so the run stops with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("GPU: {0}")]
    DeviceLost(String),
    #[error("GPU: {0}")]
    OutOfMemory(String),
    #[error("GPU: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl EngineError {
    /// The message without the "GPU: " the display adds.
    pub fn message(&self) -> &str {
        match self {
            EngineError::DeviceLost(m)
            | EngineError::OutOfMemory(m)
            | EngineError::Unsupported(m)
            | EngineError::Invalid(m) => m,
        }
    }

    /// Whether the work can continue on the CPU: a device failure or an unsupported path,
    /// never an invalid input.
    pub fn falls_back(&self) -> bool {
        !matches!(self, EngineError::Invalid(_))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
