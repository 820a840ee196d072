#!/usr/bin/env bash
# Self-check of the cluster from start.sh: a 3-task array job writes one file per task,
# then a job with --dependency=afterok on the whole array checks them and writes a
# marker. Shows the %A (array job id) / %a (task index) output patterns. Prints OK or
# fails with the job logs. Leaves its temp dir only on failure.
set -euo pipefail
WAIT_S="${VOXFLIP_SLURM_WAIT_S:-60}"
dir="$(mktemp -d /tmp/voxflip-slurm-smoke.XXXXXX)"

# Each task records when it ran so we can see how many ran at once.
cat >"$dir/task.sh" <<'EOF'
#!/bin/bash
set -eu
start=$(date +%s.%N)
echo "task $SLURM_ARRAY_TASK_ID of array $SLURM_ARRAY_JOB_ID on $(hostname)"
echo "this goes to the --error file" >&2
sleep 3
echo "$start $(date +%s.%N)" >"$SMOKE_DIR/task_$SLURM_ARRAY_TASK_ID"
EOF
cat >"$dir/check.sh" <<'EOF'
#!/bin/bash
set -eu
for i in 0 1 2; do
    test -s "$SMOKE_DIR/task_$i" || { echo "missing task_$i" >&2; exit 1; }
done
echo done >"$SMOKE_DIR/marker"
EOF

# %A = array master job id, %a = task index: one out/err pair per task.
# --export passes SMOKE_DIR on top of the submitting environment.
array_id="$(sbatch --parsable --array=0-2 --ntasks=1 --cpus-per-task=1 \
    --job-name=smoke-array --chdir="$dir" --export=ALL,SMOKE_DIR="$dir" \
    --output="$dir/array_%A_%a.out" --error="$dir/array_%A_%a.err" "$dir/task.sh")"
# --parsable prints "jobid" or "jobid;cluster"; keep the id.
array_id="${array_id%%;*}"
check_id="$(sbatch --parsable --dependency=afterok:"$array_id" --kill-on-invalid-dep=yes \
    --job-name=smoke-check --chdir="$dir" --export=ALL,SMOKE_DIR="$dir" \
    --output="$dir/check_%j.out" "$dir/check.sh")"
check_id="${check_id%%;*}"
echo "smoke.sh: submitted array job $array_id (3 tasks) and dependent job $check_id"

fail() {
    echo "smoke.sh: FAILED: $1" >&2
    timeout 5 squeue -a >&2 || true
    timeout 5 scontrol show job "$array_id" >&2 2>/dev/null || true
    timeout 5 scontrol show job "$check_id" >&2 2>/dev/null || true
    for f in "$dir"/*.out "$dir"/*.err; do
        [ -e "$f" ] || continue
        echo "---- $f" >&2
        cat "$f" >&2
    done
    echo "smoke.sh: files kept in $dir" >&2
    exit 1
}

# Poll, bounded: done when the marker exists and neither job is still queued.
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
    if [ -s "$dir/marker" ] && [ -z "$(timeout 5 squeue -h -j "$array_id,$check_id" 2>/dev/null)" ]; then
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "no marker after ${WAIT_S}s"
    sleep 0.5
done

for i in 0 1 2; do
    [ -s "$dir/array_${array_id}_$i.out" ] || fail "missing $dir/array_${array_id}_$i.out"
    [ -s "$dir/array_${array_id}_$i.err" ] || fail "missing $dir/array_${array_id}_$i.err"
done

# Largest number of tasks whose [start, end] intervals overlap.
concurrent="$(cat "$dir"/task_? | awk '{ print $1, 1; print $2, -1 }' | sort -k1,1n -k2,2n \
    | awk '{ n += $2; if (n > m) m = n } END { print m }')"
echo "smoke.sh: OK (array $array_id: 3 tasks, up to $concurrent at once; job $check_id ran afterok)"
echo "smoke.sh: outputs were e.g. $(basename "$dir/array_${array_id}_0.out"), $(basename "$dir/array_${array_id}_0.err")"
rm -rf "$dir"
