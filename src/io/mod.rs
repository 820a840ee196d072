//! Reading and writing what users have on disk: NIfTI images, FSL VEST design files,
//! BIDS participants.tsv; and writing outputs atomically (temporary name, then rename).
pub mod nifti_io;
pub mod vest;
pub mod participants;
pub mod outputs;

pub use nifti_io::{read_image, write_map, Image};
pub use outputs::OutputSet;
