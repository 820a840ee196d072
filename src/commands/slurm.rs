//! `voxflip slurm [OPTIONS] -- <voxflip arguments>`: a run as a SLURM job array of shards
//! (`--shard K/N`) and a merge job that runs after them, written as two batch scripts
//! under `{out}_slurm/` and, with `--submit`, submitted through `sbatch`.
//!
//! The merge job depends on the array with `afterany`, not `afterok`: after a failed shard
//! an `afterok` merge would stay pending forever without a word, while this one runs, names
//! the missing shard in its log and exits non-zero; `--rerun-missing` then resubmits just
//! the missing shards and a new merge. Shards run with `--resume`, so a shard that was
//! pre-empted continues from its checkpoint and a complete one is not recomputed.
use crate::cli::{Cli, Command, CommonArgs, SlurmArgs};
use crate::error::{Error, Result};
use crate::state::{NullState, Shard};
use clap::Parser;
use std::path::{Path, PathBuf};

/// The two scripts of a submission.
struct Scripts {
    dir: PathBuf,
    shards: String,
    merge: String,
    /// The array's task ids (1..=N, or the missing ones).
    tasks: Vec<usize>,
}

pub fn run(a: &SlurmArgs) -> Result<()> {
    let mut argv = vec!["voxflip".to_string()];
    argv.extend(a.args.iter().cloned());
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        Error::usage(format!(
            "slurm: the voxflip arguments after -- do not parse: {}",
            e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ")
        ))
    })?;
    let common: &CommonArgs = match &cli.command {
        None => {
            if cli.glm.input.is_none() {
                return Err(Error::usage("slurm: give the analysis after --, e.g. -- -i all.nii.gz -o out -1 -T"));
            }
            &cli.glm.common
        }
        Some(Command::Interaction(ia)) => &ia.common,
        Some(_) => return Err(Error::usage("slurm: only an analysis (the GLM or interaction) runs as shards")),
    };
    if common.distribution.shard.is_some() || common.distribution.resume {
        return Err(Error::usage("slurm: leave --shard and --resume out: each job gets its own"));
    }
    let out = common.out()?;
    let count = match a.shards {
        Some(0) => return Err(Error::usage("slurm: --shards 0: give at least 1")),
        Some(n) => n,
        // About 1,000 permutations per shard: long enough that start-up (reading the
        // inputs) stays a small part of each job.
        None if common.n_perm == 0 => 8,
        None => common.n_perm.div_ceil(1000).clamp(1, 64),
    };
    let tasks: Vec<usize> = if a.rerun_missing {
        let missing: Vec<usize> =
            (1..=count).filter(|&k| NullState::read(&Shard { index: k, count }.file(&out)).is_err()).collect();
        for &k in &missing {
            log::info!("shard {k} of {count} is missing: {}", Shard { index: k, count }.file(&out).display());
        }
        if missing.is_empty() {
            log::info!("all {count} shards of {out} are present; only the merge runs");
        }
        missing
    } else {
        (1..=count).collect()
    };
    let scripts = scripts(a, &out, count, tasks)?;
    if a.dry_run {
        print!(
            "# {}/shards.sh\n{}\n# {}/merge.sh\n{}",
            scripts.dir.display(),
            scripts.shards,
            scripts.dir.display(),
            scripts.merge
        );
        return Ok(());
    }
    let logs = log_dir(a, &out);
    for d in [&scripts.dir, &logs] {
        std::fs::create_dir_all(d).map_err(|e| Error::output(d, voxflip_io::io_msg(&e)))?;
    }
    let (shards_sh, merge_sh) = (scripts.dir.join("shards.sh"), scripts.dir.join("merge.sh"));
    for (p, text) in [(&shards_sh, &scripts.shards), (&merge_sh, &scripts.merge)] {
        std::fs::write(p, text).map_err(|e| Error::output(p, voxflip_io::io_msg(&e)))?;
    }
    if !a.submit {
        log::info!(
            "wrote {} and {}; submit with: jid=$(sbatch --parsable {}) && sbatch --dependency=afterany:$jid {}",
            shards_sh.display(),
            merge_sh.display(),
            shards_sh.display(),
            merge_sh.display()
        );
        return Ok(());
    }
    let dependency = if scripts.tasks.is_empty() {
        None
    } else {
        let id = sbatch(&[shards_sh.as_os_str()])?;
        log::info!("submitted {} shard job(s) as array {id}; logs in {}", scripts.tasks.len(), logs.display());
        Some(id)
    };
    let dep = dependency.as_ref().map(|id| format!("--dependency=afterany:{id}"));
    let mut margs: Vec<&std::ffi::OsStr> = Vec::new();
    if let Some(d) = &dep {
        margs.push(d.as_ref());
    }
    margs.push(merge_sh.as_os_str());
    let mid = sbatch(&margs)?;
    println!("{}", dependency.map_or(mid.clone(), |s| format!("{s} {mid}")));
    log::info!(
        "submitted the merge as job {mid}; the outputs will be {out}_*, its summary in {}",
        logs.join("merge.err").display()
    );
    Ok(())
}

fn log_dir(a: &SlurmArgs, out: &str) -> PathBuf {
    a.log_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{out}_slurm/logs")))
}

/// `sbatch --parsable ARGS`: the job id.
fn sbatch(args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = std::process::Command::new("sbatch").arg("--parsable").args(args).output().map_err(|e| {
        Error::usage(format!("slurm: cannot run sbatch ({}): is SLURM installed here?", voxflip_io::io_msg(&e)))
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::usage(format!("slurm: sbatch failed: {}", err.trim().replace('\n', " "))));
    }
    // --parsable prints "jobid" or "jobid;cluster".
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() {
        return Err(Error::usage("slurm: sbatch printed no job id"));
    }
    Ok(id)
}

/// The `#SBATCH` lines both jobs share.
fn resources(a: &SlurmArgs, gpu: bool) -> String {
    let mut s = String::new();
    let mut line = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!("#SBATCH --{flag}={v}\n"));
        }
    };
    line("partition", &a.partition);
    line("time", &a.time);
    line("mem", &a.mem);
    if gpu {
        line("cpus-per-task", &a.cpus_per_task.map(|c| c.to_string()));
        line("gres", &a.gres);
    }
    s
}

fn scripts(a: &SlurmArgs, out: &str, count: usize, tasks: Vec<usize>) -> Result<Scripts> {
    let exe = std::env::current_exe().map_err(|e| Error::usage(format!("slurm: where is voxflip? {e}")))?;
    let cwd = std::env::current_dir().map_err(|e| Error::usage(format!("slurm: the current directory: {e}")))?;
    let logs = absolute(&cwd, &log_dir(a, out));
    let dir = PathBuf::from(format!("{out}_slurm"));
    let base = Path::new(out).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let array = array_spec(&tasks);
    let args: Vec<String> = a.args.iter().map(|s| quote(s)).collect();
    let cd = quote(&cwd.display().to_string());
    let exe = quote(&exe.display().to_string());
    let shards = format!(
        "#!/bin/bash\n\
         #SBATCH --job-name=voxflip-{base}\n\
         #SBATCH --array={array}\n\
         #SBATCH --output={logs}/shard-%a-of-{count}.out\n\
         #SBATCH --error={logs}/shard-%a-of-{count}.err\n\
         {res}\
         # Shard K of {count} of the permutations; --resume continues a pre-empted shard from its\n\
         # checkpoint and skips a complete one.\n\
         set -euo pipefail\n\
         cd {cd}\n\
         exec {exe} {args} --shard \"${{SLURM_ARRAY_TASK_ID}}/{count}\" --resume\n",
        logs = logs.display(),
        res = resources(a, true),
        args = args.join(" "),
    );
    let rerun = format!("{exe} slurm --rerun-missing --submit --shards {count} -- {}", args.join(" "));
    let merge = format!(
        "#!/bin/bash\n\
         #SBATCH --job-name=voxflip-{base}-merge\n\
         #SBATCH --output={logs}/merge.out\n\
         #SBATCH --error={logs}/merge.err\n\
         {res}\
         # The outputs of the whole run from the {count} shards; a missing shard is named here.\n\
         set -uo pipefail\n\
         cd {cd}\n\
         if ! {exe} merge {out}; then\n\
         \x20   echo \"voxflip: rerun the missing shards and the merge with: {rerun_esc}\" >&2\n\
         \x20   exit 1\n\
         fi\n",
        logs = logs.display(),
        res = resources(a, false),
        out = quote(out),
        rerun_esc = rerun.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$").replace('`', "\\`"),
    );
    Ok(Scripts { dir, shards, merge, tasks })
}

/// sbatch's --array list: runs of consecutive ids as ranges (`1-4,7`).
fn array_spec(tasks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tasks.len() {
        let mut j = i;
        while j + 1 < tasks.len() && tasks[j + 1] == tasks[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", tasks[i], tasks[j]) } else { tasks[i].to_string() });
        i = j + 1;
    }
    parts.join(",")
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// `s` as one word for bash.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_are_quoted_for_bash() {
        assert_eq!(super::quote("out/r_1"), "out/r_1");
        assert_eq!(super::quote("a b"), "'a b'");
        assert_eq!(super::quote("it's"), "'it'\\''s'");
        assert_eq!(super::quote("{participant_id}"), "'{participant_id}'");
        assert_eq!(super::quote(""), "''");
    }

    #[test]
    fn array_lists_are_compressed() {
        assert_eq!(super::array_spec(&[1, 2, 3, 4]), "1-4");
        assert_eq!(super::array_spec(&[2, 5, 6, 9]), "2,5-6,9");
        assert_eq!(super::array_spec(&[3]), "3");
    }
}
