//! voxflip's inputs and outputs: what users have on disk, read into the data matrix the
//! statistics take, and the outputs written back atomically. No mathematics, no GPU.
//!
//! - [`gzip`]: gzip compressed and inflated on every core, in chunks fixed by the length;
//! - [`nifti`]: NIfTI-1/2 images in (any datatype, scaling applied) and float32 maps out;
//! - [`names`]: image names without extension (FSL's rule) and FSLOUTPUTTYPE's extension;
//! - [`vest`]: FSL VEST design.mat / design.con / design.fts / design.grp;
//! - [`participants`]: BIDS participants.tsv;
//! - [`dataset`]: the in-mask data matrix Y (N images x V voxels) and its grid;
//! - [`outputs`]: a set of outputs written under temporary names and renamed together;
//! - [`temps`]: temporaries named by pid, removed on an interrupt and after dead runs;
//! - [`nullstate`]: permutation state (shards, checkpoints) as one durable, checksummed file.
//!
//! Every error is one line that names the file ([`Error`]).
pub mod dataset;
mod error;
pub mod gzip;
mod journal;
pub mod names;
pub mod nifti;
pub mod nullstate;
pub mod outputs;
pub mod participants;
pub mod temps;
pub mod vest;

pub use dataset::Dataset;
pub use error::{io_msg, Error, Result};
pub use names::{resolve_image, OutputType};
pub use nifti::{header_from_affine, read_image, write_image, write_map, Header, Image};
pub use nullstate::{read_state, write_durably, write_state, StateArray, StateFile};
pub use outputs::{check_dir, OutputSet};
pub use participants::{read_participants, Participants};
pub use vest::{read_contrasts, read_design, read_fts, read_grp, read_vest, Vest};
