//! FSL VEST text matrices: design.mat, design.con, design.fts, design.grp.
