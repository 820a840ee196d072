#!/usr/bin/env bash
# Sharding, checkpoints and a large-N run, measured on this machine (not CI).
#   benches/shards.sh [WORKDIR] [N_LARGE]
# 1. Scaling: one 2 mm run against 2 shards run concurrently (the same permutations), wall
#    and CPU time, voxelwise (5,000 sign flips) and TFCE (500).
# 2. Checkpoint overhead: the TFCE run with a checkpoint after every stretch of 1,024
#    permutations against none.
# 3. Large N: N_LARGE subjects (default 1000) on the 2 mm grid, 1,000 sign flips voxelwise,
#    as one run and as 8 shards (run one after another), peak memory per process and time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
V="$here/target/release/voxflip"
W="${1:-/tmp/voxflip-shard-bench}"
NL="${2:-1000}"
mkdir -p "$W" && cd "$W"
[ -x "$V" ] || (cd "$here" && cargo build --release)
[ -f d2/post.nii.gz ] || "$V" simulate --out d2 --grid 2mm >/dev/null
ia() { echo interaction --pre "$1/pre.nii.gz" --post "$1/post.nii.gz" --participants "$1/participants.tsv" -m "$1/mask.nii.gz" --backend cpu --quiet; }
# "wall user+sys maxrss_MB" of a command.
measure() { /usr/bin/time -f "%e %U %S %M" -o t.$$ "$@" >/dev/null; awk '{printf "%.2f s wall, %.2f s CPU, %.0f MB peak\n", $1, $2+$3, $4/1024}' t.$$; }
concurrent() {
    local t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S %M" -o a.$$ "$@" --shard 1/2 >/dev/null &
    /usr/bin/time -f "%U %S %M" -o b.$$ "$@" --shard 2/2 >/dev/null &
    wait
    local t1=$(date +%s.%N)
    "$V" merge "$OUT" --quiet
    awk -v w="$(echo "$t1 - $t0" | bc)" 'NR==FNR{c+=$1+$2; m=$3; next}{c+=$1+$2; if ($3>m) m=$3} END{printf "%.2f s wall, %.2f s CPU, %.0f MB peak per process (+ merge)\n", w, c, m/1024}' a.$$ b.$$
}
mkdir -p out
echo "== 2 mm, N=58, voxelwise, 5000 sign flips"
OUT=out/vs
printf "one run:            "; measure "$V" $(ia d2) -n 5000 -x -o out/v1
printf "2 shards at once:   "; concurrent "$V" $(ia d2) -n 5000 -x -o $OUT
for f in out/v1_*.nii.gz; do cmp -s "$f" "out/vs_${f#out/v1_}" || echo "  DIFFERS: $f"; done
echo "== 2 mm, N=58, TFCE, 500 sign flips"
OUT=out/ts
printf "one run:            "; measure "$V" $(ia d2) -n 500 -T -o out/t1
printf "2 shards at once:   "; concurrent "$V" $(ia d2) -n 500 -T -o $OUT
for f in out/t1_*.nii.gz; do cmp -s "$f" "out/ts_${f#out/t1_}" || echo "  DIFFERS: $f"; done
echo "== checkpoint overhead (TFCE, 500 sign flips, a checkpoint every 128 permutations)"
printf "no checkpoint:      "; measure "$V" $(ia d2) -n 500 -T -o out/c0 --no-checkpoint
printf "every stretch:      "; measure "$V" $(ia d2) -n 500 -T -o out/c1 --checkpoint-seconds 0 --checkpoint-permutations 128
ls -l out/c1_* >/dev/null
echo "   one checkpoint file at 2 mm: $(( $(stat -c %s out/ts_shard-1-of-2) / 1024 )) KiB (a shard's state, 3 contrasts with TFCE)"
echo "== large N: N=$NL, 2 mm, 1000 sign flips voxelwise"
half=$((NL / 2))
[ -f "dl$NL/post.nii.gz" ] || { printf "simulate:           "; measure "$V" simulate --out "dl$NL" --grid 2mm --n-a $half --n-b $((NL - half)); }
printf "one run:            "; measure "$V" $(ia "dl$NL") -n 1000 -x -o out/l1
for k in 1 2 3 4 5 6 7 8; do printf "shard $k of 8:       "; measure "$V" $(ia "dl$NL") -n 1000 -x -o out/l8 --shard $k/8; done
printf "merge:              "; measure "$V" merge out/l8 --quiet
for f in out/l1_*.nii.gz; do cmp -s "$f" "out/l8_${f#out/l1_}" || echo "  DIFFERS: $f"; done
rm -f t.$$ a.$$ b.$$
