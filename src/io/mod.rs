//! Reading and writing what users have on disk: NIfTI images, FSL VEST design files,
//! BIDS participants.tsv; and writing outputs atomically (temporary name, then rename).
pub mod nifti_io;
pub mod vest;
pub mod participants;
pub mod outputs;

pub use nifti_io::{header_from_affine, read_image, write_image, write_map, Image};
pub use outputs::{check_dir, OutputSet};
pub use participants::{read_participants, Participants};
pub use vest::{read_contrasts, read_design, read_fts, read_grp, read_vest, Vest};
