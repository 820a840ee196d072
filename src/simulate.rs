//! `voxflip simulate`: a realistic two-group, two-time dataset with known effects.
