#!/usr/bin/env bash
# voxflip against FSL randomise v2.9, built here from its public source. Not part of CI.
#
#   benches/randomise_compare/run.sh [RANDOMISE_SRC]
#
# Needs g++, libboost-dev, libblas-dev, liblapack-dev, zlib1g-dev and python3 (apt-get);
# RANDOMISE_SRC is a checkout of https://github.com/Bostrix/FSL-randomise (cloned into the
# scratch folder when not given). Everything goes under $SCRATCH (default
# /tmp/voxflip-randomise): the randomise build, a venv with numpy and nibabel, the data and
# both tools' outputs. Prints the per-map agreement (see compare.py) and exits non-zero
# when some map disagrees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
scratch=${SCRATCH:-/tmp/voxflip-randomise}
mkdir -p "$scratch"
src=${1:-$scratch/FSL-randomise}
if [ ! -d "$src" ]; then
    git clone --depth 1 https://github.com/Bostrix/FSL-randomise "$src"
fi
randomise=$("$here/build_randomise.sh" "$src" "$scratch/build" | tail -1)
if [ ! -x "$scratch/venv/bin/python" ]; then
    python3 -m venv "$scratch/venv"
    "$scratch/venv/bin/pip" install -q numpy nibabel
fi
(cd "$repo" && cargo build --release -q)
"$scratch/venv/bin/python" "$here/compare.py" --randomise "$randomise" \
    --voxflip "$repo/target/release/voxflip" --work "$scratch/runs" "${@:2}"
