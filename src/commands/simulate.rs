//! `voxflip simulate`: write the simulated two-group, two-time study.
use crate::cli::SimulateArgs;
use crate::error::{Error, Result};

pub fn parse_grid(s: &str) -> Result<voxflip_simulate::SimGrid> {
    match s {
        "2mm" | "mni2mm" => Ok(voxflip_simulate::SimGrid::Mni2mm),
        "small" | "4mm" => Ok(voxflip_simulate::SimGrid::Small),
        other => Err(Error::usage(format!("--grid {other}: expected 2mm or small"))),
    }
}

pub fn run(a: &SimulateArgs) -> Result<()> {
    if a.n_a == 0 || a.n_b == 0 {
        return Err(Error::usage("--n-a and --n-b: each group needs at least one subject"));
    }
    let cfg = voxflip_simulate::SimConfig {
        grid: parse_grid(&a.grid)?,
        n_a: a.n_a,
        n_b: a.n_b,
        seed: a.seed,
        ..Default::default()
    };
    let data = voxflip_simulate::simulate(&cfg);
    let files = voxflip_simulate::write_dataset(&data, &a.out)?;
    eprintln!("voxflip: wrote {} files to {}", files.len(), a.out.display());
    Ok(())
}
