#!/usr/bin/env bash
# Build FSL randomise v2.9 from its public source (the standalone extraction of FSL's
# randomise with its newimage, miscmaths, NewNifti, cprob, utils and znzlib dependencies)
# with g++, boost, BLAS and LAPACK from Debian: apt-get install g++ libboost-dev
# libblas-dev liblapack-dev zlib1g-dev.
#
#   build_randomise.sh SRC_DIR BUILD_DIR      -> BUILD_DIR/randomise
#
# SRC_DIR is a checkout of https://github.com/Bostrix/FSL-randomise (its large example
# images are not needed). The upstream Makefile expects the tree under $HOME and builds
# shared libraries; this compiles the same sources into one static link instead, so
# nothing is installed and nothing outside BUILD_DIR is written.
set -euo pipefail
src=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
jobs=${JOBS:-$(nproc)}
cd "$src"
# Everything the randomise binary links, minus the test and example programs (own main()).
sources=$(ls newimage/*.cc miscmaths/*.cc miscmaths/*.cpp NewNifti/*.cc cprob/*.cc \
    utils/*.cc utils/*.cpp randomise.cc ranopts.cc 2>/dev/null |
    grep -v -E '(skeletonapp|kertest|opttst|dftest)\.cc$')
mkdir -p "$out/obj"
compile() {
    local f=$1 o
    o="$3/obj/$(echo "$f" | tr '/' '_').o"
    [ -s "$o" ] && [ "$o" -nt "$2/$f" ] && return 0
    g++ -O2 -std=c++17 -w -fpermissive -DEXPOSE_TREACHEROUS -DBUILDSTRING='"voxflip-harness"' \
        -I"$2" -I"$2/utils" -c "$2/$f" -o "$o"
}
export -f compile
echo "$sources" | xargs -P "$jobs" -I{} bash -c 'compile "$@"' _ {} "$src" "$out"
gcc -O2 -w -c znzlib/znzlib.c -I znzlib -DHAVE_ZLIB -o "$out/obj/znzlib.o"
g++ -o "$out/randomise" "$out"/obj/*.o -llapack -lblas -lz -lpthread -ldl
echo "$out/randomise"
