//! voxflip: whole-brain permutation inference for neuroimaging group studies.
//!
//! The library does the work; `main.rs` only parses the command line. Data flow (see
//! DESIGN.md): inputs (`io`) -> design and contrasts (`design`) -> GLM precomputation
//! (`glm`) -> permutation set (`perm`) -> engine batches (`engine`) -> p-values
//! (`inference`) -> outputs (`output`).
pub mod error;
pub mod io;
pub mod perm;
pub mod glm;
pub mod design;
pub mod data;
pub mod inference;
pub mod analysis;
pub mod progress;
pub mod cli;
pub mod spatial_inference;
pub mod engine;
pub mod spatial;
pub mod simulate;
pub mod bench;

pub use error::{Error, Result};
