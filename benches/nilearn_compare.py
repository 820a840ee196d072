#!/usr/bin/env python3
"""voxflip against nilearn's permuted_ols on the same data and the same design.

Not part of CI. Run in a throwaway environment:

    python3 -m venv /tmp/nl && /tmp/nl/bin/pip install nilearn
    cargo run --release -- simulate --out /tmp/sim            # the 2 mm study
    /tmp/nl/bin/python benches/nilearn_compare.py /tmp/sim [--perms 500] [--tfce]

It fits the interaction (group A > B on post - pre, intercept as confound) with
nilearn.mass_univariate.permuted_ols (which exchanges rows for this design), times it,
then runs voxflip's `interaction --permute` with the same number of permutations and
prints both times, their ratio and each tool's effective GFLOP/s (2 q N V per
permutation, q = 2), all measured in this one run. With --tfce both compute TFCE
(nilearn: tfce=True; voxflip: -T) and the ratio is for the TFCE runs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
from nilearn.mass_univariate import permuted_ols

ap = argparse.ArgumentParser()
ap.add_argument("simdir")
ap.add_argument("--perms", type=int, default=500)
ap.add_argument("--tfce", action="store_true")
ap.add_argument("--voxflip", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "voxflip"))
args = ap.parse_args()

pre = nib.load(os.path.join(args.simdir, "pre.nii.gz")).get_fdata(dtype=np.float32)
post = nib.load(os.path.join(args.simdir, "post.nii.gz")).get_fdata(dtype=np.float32)
mask_img = nib.load(os.path.join(args.simdir, "mask.nii.gz"))
mask = mask_img.get_fdata() > 0
groups = [l.split("\t")[1].strip() for l in open(os.path.join(args.simdir, "participants.tsv")).read().splitlines()[1:]]
first = groups[0]
g = np.array([1.0 if x == first else 0.0 for x in groups])
diff = (post - pre)[mask].T  # N x V
n, v = diff.shape
tested = (g - g.mean())[:, None]  # group difference; the intercept is the confound
conf = np.ones((n, 1))
flops = 2 * 2 * n * v * args.perms

kw = dict(tested_vars=tested, target_vars=diff, confounding_vars=conf, model_intercept=False,
          n_perm=args.perms, two_sided_test=False, random_state=0, n_jobs=os.cpu_count(), verbose=0)
if args.tfce:
    # nilearn needs the masker to know the grid for TFCE.
    from nilearn.maskers import NiftiMasker
    kw["masker"] = NiftiMasker(mask_img).fit()
    kw["tfce"] = True
t = time.time()
out = permuted_ols(**kw)
t_nl = time.time() - t
print(f"nilearn permuted_ols: N={n} V={v} perms={args.perms}{' tfce' if args.tfce else ''}: {t_nl:.2f} s, {flops / t_nl / 1e9:.2f} GFLOP/s effective")

with tempfile.TemporaryDirectory() as tmp:
    cmd = [args.voxflip, "interaction", "--pre", os.path.join(args.simdir, "pre.nii.gz"), "--post", os.path.join(args.simdir, "post.nii.gz"),
           "--participants", os.path.join(args.simdir, "participants.tsv"), "-m", os.path.join(args.simdir, "mask.nii.gz"),
           "-o", os.path.join(tmp, "r"), "-n", str(args.perms), "--permute", "--quiet", "--backend", "cpu"]
    if args.tfce:
        cmd.append("-T")
    t = time.time()
    subprocess.run(cmd, check=True)
    t_vf_wall = time.time() - t
    rep = json.load(open(os.path.join(tmp, "r_voxflip.json")))
    c1 = rep["contrasts"][0]
    t_vf = c1["seconds"]
print(f"voxflip (cpu) tstat1: {t_vf:.2f} s for the permutations ({t_vf_wall:.2f} s wall for 3 contrasts incl. I/O), {flops / t_vf / 1e9:.2f} GFLOP/s effective")
print(f"speed-up (nilearn time / voxflip time, one contrast): {t_nl / t_vf:.1f}x")
