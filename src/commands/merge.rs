//! `voxflip merge PREFIX [SHARDS...]`: the outputs of a whole run from its shards
//! (`--shard K/N`), or a finished run's outputs rewritten from its kept state
//! (`--keep-null-state`) with other output options, without running permutations again.
//!
//! The shards hold the command line they ran with: it is parsed again (without --shard
//! and --resume), its inputs are read again and must give the shards' identity, and the run
//! proceeds as a single run would, its permutations taken from the merged state.
use crate::cli::{Cli, Command, CommonArgs, MergeArgs};
use crate::error::{Error, Result};
use crate::state::{find_shards, merge};
use clap::Parser;
use std::sync::Arc;

pub fn run(a: &MergeArgs) -> Result<()> {
    let files = if a.shards.is_empty() { find_shards(&a.prefix)? } else { a.shards.clone() };
    let merged = merge(&files)?;
    let args = without_distribution_flags(&merged.state.command_line);
    let mut cli = Cli::try_parse_from(&args).map_err(|e| {
        Error::input(
            &files[0],
            format!(
                "its command line no longer parses ({})",
                e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ")
            ),
        )
    })?;
    let merged = Arc::new(merged);
    let apply = |c: &mut CommonArgs| {
        c.out = Some(a.out.clone().unwrap_or_else(|| a.prefix.clone()));
        c.vox_corrp |= a.vox_corrp;
        c.uncorrp |= a.uncorrp;
        c.logp |= a.logp;
        c.save_null |= a.save_null;
        c.quiet |= a.quiet;
        c.distribution.shard = None;
        c.distribution.resume = false;
        c.distribution.keep_null_state = a.keep_null_state;
        c.distribution.merged = Some(merged.clone());
    };
    match &mut cli.command {
        None => {
            apply(&mut cli.glm.common);
            super::glm::run(&cli.glm, &args)
        }
        Some(Command::Interaction(ia)) => {
            apply(&mut ia.common);
            super::interaction::run(ia, &args)
        }
        Some(_) => Err(Error::input(&files[0], "not the state of an analysis (glm or interaction)")),
    }
}

/// The command line of the single run the shards make up: without --shard K/N and
/// --resume, so the merged sidecar records what a single run records.
pub fn without_distribution_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.as_str() {
            "--shard" => skip_value = true,
            "--resume" => {}
            _ if a.starts_with("--shard=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn distribution_flags_are_dropped_and_nothing_else() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            super::without_distribution_flags(&v("voxflip -i a --shard 2/4 -o o --resume --shard=3/4 -T")),
            v("voxflip -i a -o o -T")
        );
    }
}
