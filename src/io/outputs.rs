//! A set of output files written under temporary names and renamed together at the end,
//! so a failed run leaves nothing partial behind.
