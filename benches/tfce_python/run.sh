#!/usr/bin/env bash
# The CAT12 TFCE toolbox's Python package `tfce` (exact TFCE, BSD, PyPI) against voxflip's
# TFCE on the same realistic 2 mm maps (the simulated driving study's sign-flipped t maps),
# both on one thread. Not run by CI.
#
#   benches/tfce_python/run.sh [MAPS]        # from the repository root; MAPS default 20
#
# It builds the `tfce_maps` example, which times voxflip (reference and fast engines,
# stepwise and exact, one thread; the null's loop on 1 and 2 threads) and exports the maps
# and voxflip's exact TFCE of them; creates a throwaway venv in /tmp; pip-installs `tfce`
# and numpy there; times `tfce.tfce` per map and compares its values with voxflip's exact
# TFCE (see compare.py for the definitions and the tolerance).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
maps="${1:-20}"
work="$(mktemp -d /tmp/tfce_python.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "== voxflip (cargo run --release --example tfce_maps -- $maps --export ...)"
RAYON_NUM_THREADS=1 cargo run --release --quiet --example tfce_maps -- "$maps" --export "$work/maps" | tee "$work/voxflip.txt"
echo "== python package tfce (venv in $work/venv)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet tfce numpy
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$work/venv/bin/python" "$here/compare.py" "$work/maps" "$work/voxflip.txt"
