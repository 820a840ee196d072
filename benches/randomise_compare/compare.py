#!/usr/bin/env python3
"""voxflip against FSL randomise v2.9 on the same simulated data with the same flags.

Not part of CI (it builds randomise from source and runs both tools). See run.sh, which
sets up a throwaway venv (numpy, nibabel), builds randomise and calls this:

    compare.py --randomise PATH --voxflip PATH [--work DIR] [--only CASE,..]

Each case writes its own data (numpy: smooth Gaussian noise plus a planted blob, on a
small grid so that exhaustive runs are quick), runs both tools with the same flags and
prints, per output map that both wrote, how far apart they are:
- statistic maps (t, F, TFCE, raw cluster maps, GLM maps): the largest relative
  difference over voxels, |a - b| / max(|b|, 1e-6) (target 1e-5);
- p maps of exhaustive runs: the number of voxels whose p differ (target 0; p are
  multiples of 1/P, compared within 0.25/P);
- p maps of random runs (the two tools draw different permutations): for uncorrected p,
  the share of voxels whose difference is within Monte Carlo error,
  4 sqrt(2 p (1 - p) / P) + 2 / P (target 99%); for FWE-corrected p, whose voxels all read
  one null, the largest difference against the two-sample Kolmogorov-Smirnov bound
  1.95 sqrt(2 / P) (alpha = 0.001);
and, per case, the outputs each tool wrote (the option-by-option table).
"""
import argparse
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

GRID = (14, 16, 12)


def smooth(a, passes=2):
    """A cheap separable box smoothing (edges wrap off by clamping), enough for spatially
    correlated noise so that clusters and TFCE have something to join."""
    for _ in range(passes):
        for ax in range(3):
            a = (np.roll(a, 1, ax) + a + np.roll(a, -1, ax)) / 3.0
    return a


def blob(center, radius):
    x, y, z = np.indices(GRID)
    d2 = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2
    return np.exp(-d2 / (2.0 * radius**2))


def write_nii(path, data):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-14.0, -16.0, -12.0]
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), aff)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def write_vest(path, rows):
    rows = np.atleast_2d(np.asarray(rows, dtype=float))
    with open(path, "w") as f:
        f.write(f"/NumWaves {rows.shape[1]}\n/NumPoints {rows.shape[0]}\n/Matrix\n")
        for r in rows:
            f.write(" ".join(f"{v:.6g}" for v in r) + "\n")


def write_fts(path, rows):
    rows = np.atleast_2d(np.asarray(rows, dtype=int))
    with open(path, "w") as f:
        f.write(f"/NumWaves {rows.shape[1]}\n/NumContrasts {rows.shape[0]}\n/Matrix\n")
        for r in rows:
            f.write(" ".join(str(v) for v in r) + "\n")


def data_4d(rng, n, effect_per_row, signal, zero_outside=None):
    """n volumes: effect_per_row[i] * signal + smooth noise; voxels outside zero_outside
    (a boolean map) are set to 0 in every volume (constant voxels)."""
    vols = []
    for i in range(n):
        noise = smooth(rng.standard_normal(GRID))
        noise /= noise.std()
        v = effect_per_row[i] * signal + noise
        if zero_outside is not None:
            v = np.where(zero_outside, v, 0.0)
        vols.append(v)
    return np.stack(vols, axis=-1)


def interior_mask():
    m = np.zeros(GRID, dtype=bool)
    m[2:-2, 2:-2, 2:-2] = True
    return m


def ellipsoid():
    x, y, z = np.indices(GRID)
    c = [(s - 1) / 2.0 for s in GRID]
    r = [s / 2.0 - 1.5 for s in GRID]
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


class Case:
    def __init__(self, name, flags, exhaustive, n_perm, build, show_stdout=False, differs=None):
        self.name, self.flags, self.exhaustive, self.n_perm, self.build = name, flags, exhaustive, n_perm, build
        # A difference the README documents: its maps are shown but do not fail the run.
        self.differs = differs
        # Options that print and exit (-q, -Q): show what each tool printed.
        self.show_stdout = show_stdout


def cases():
    sig = 1.2 * blob((5, 6, 5), 2.0) - 1.0 * blob((10, 11, 7), 1.5)
    full = np.ones(GRID)

    def one_sample(dirn, rng, n, mask, zero_outside=None):
        write_nii(f"{dirn}/data.nii.gz", data_4d(rng, n, np.ones(n), sig, zero_outside))
        write_nii(f"{dirn}/mask.nii.gz", mask)
        return ["-i", "data", "-m", "mask", "-1"]

    def two_group(dirn, rng, na, nb, extra=None, blocks=None):
        n = na + nb
        g = np.r_[np.ones(na), np.zeros(nb)]
        write_nii(f"{dirn}/data.nii.gz", data_4d(rng, n, g, sig))
        write_nii(f"{dirn}/mask.nii.gz", full)
        design = np.c_[g, 1 - g]
        if extra is not None:
            design = np.c_[design, extra(n, rng)]
        write_vest(f"{dirn}/design.mat", design)
        con = np.zeros((2, design.shape[1]))
        con[0, :2] = [1, -1]
        con[1, :2] = [-1, 1]
        write_vest(f"{dirn}/design.con", con)
        write_fts(f"{dirn}/design.fts", [[1, 0]])
        flags = ["-i", "data", "-m", "mask", "-d", "design.mat", "-t", "design.con"]
        if blocks is not None:
            write_vest(f"{dirn}/design.grp", np.asarray(blocks(n)).reshape(-1, 1))
            flags += ["-e", "design.grp"]
        return flags

    spatial = ["-T", "-x", "--uncorrp", "-c", "1.5", "-C", "1.5", "-R"]
    covariate = lambda n, rng: rng.standard_normal((n, 1))  # noqa: E731
    small = lambda d, r: one_sample(d, r, 8, interior_mask())  # noqa: E731
    options = [
        # One option at a time over a small exhaustive one-sample run (2^8 = 256 flips):
        # what each tool writes or prints for it.
        Case("option_N", ["-x", "-N"], True, 5000, small),
        Case("option_P", ["-x", "-P"], True, 5000, small),
        Case("option_q", ["-q"], True, 5000, small, show_stdout=True),
        Case("option_Q", ["-Q"], True, 5000, small, show_stdout=True),
        Case("option_v", ["-x", "--uncorrp", "-v", "3"], True, 5000, small),
        Case("option_T2", ["--T2", "-x"], True, 5000, small),
        Case("option_permout", ["-x", "--permout"], True, 5000, lambda d, r: one_sample(d, r, 5, interior_mask())),
        Case("option_glm_output", ["-x", "--glm_output"], True, 5000, lambda d, r: two_group(d, r, 4, 5)),
        Case("option_norcmask", ["-x", "--uncorrp", "--norcmask"], True, 5000,
             lambda d, r: one_sample(d, r, 8, np.ones(GRID), ellipsoid())),
        # With a covariate the 924 relabelings of the groups are exhaustive in both tools.
        Case("option_D", ["-x", "--uncorrp", "-D"], True, 2000, lambda d, r: two_group(d, r, 6, 6, covariate)),
        Case("option_e", ["-x", "--uncorrp"], True, 5000,
             lambda d, r: two_group(d, r, 4, 4, blocks=lambda n: [1 + (i % 2) for i in range(n)])),
    ] + [
        Case(f"option_U{u}", ["-x", "--uncorrp", "-U", str(u)], True, 2000,
             lambda d, r: two_group(d, r, 6, 6, covariate),
             differs="randomise's -U 3 observed map comes from the residuals, so it is 0; voxflip's from the data"
             if u == 3 else None)
        for u in range(4)
    ]
    return options + [
        # A mask that touches every face of the grid: randomise's TFCE edge rule.
        Case("onesample_full_mask", spatial, True, 5000,
             lambda d, r: one_sample(d, r, 10, full)),
        # An interior mask (off the outermost layer).
        Case("onesample_interior", spatial, True, 5000,
             lambda d, r: one_sample(d, r, 10, interior_mask())),
        # A full mask over data that is zero outside an ellipsoid: constant voxels dropped.
        Case("onesample_constant_voxels", spatial, True, 5000,
             lambda d, r: one_sample(d, r, 10, full, ellipsoid())),
        # Two groups, exhaustive relabelings (9 choose 4 = 126), t and F.
        Case("twogroup_exhaustive", spatial + ["-f", "design.fts", "-F", "2.0"], True, 5000,
             lambda d, r: two_group(d, r, 4, 5)),
        # Two groups and a continuous covariate, exhaustive over the group relabelings (126):
        # identical p needs randomise's representative row permutations (and -P shows them).
        Case("twogroup_covariate_exhaustive", spatial + ["-P"], True, 5000,
             lambda d, r: two_group(d, r, 4, 5, covariate)),
        # Two groups and a continuous covariate: random permutations, Freedman-Lane.
        Case("twogroup_covariate_random", ["-T", "-x", "--uncorrp"], False, 1000,
             lambda d, r: two_group(d, r, 8, 8, lambda n, rng: rng.standard_normal((n, 1)))),
        # A rank-deficient design (a redundant third column) with estimable contrasts.
        Case("twogroup_rank_deficient", ["-x", "--uncorrp"], True, 5000,
             lambda d, r: two_group(d, r, 4, 5, lambda n, rng: np.ones((n, 1)))),
        # One sample, random sign flips.
        Case("onesample_random", ["-T", "-x", "--uncorrp"], False, 1000,
             lambda d, r: one_sample(d, r, 20, full)),
    ]


def outputs_of(prefix_dir, tag):
    """Every file the tool wrote under its prefix: maps by name without .nii.gz, other files
    (text, JSON) with their extension."""
    out = {}
    for f in sorted(os.listdir(prefix_dir)):
        if f.startswith(tag + "_"):
            key = f[len(tag) + 1 :]
            out[key[: -len(".nii.gz")] if key.endswith(".nii.gz") else key] = os.path.join(prefix_dir, f)
    return out


def is_p_map(name):
    if "_perm0" in name:  # --permout: a permutation's statistic map
        return False
    return "_p_" in name or name.startswith(("vox_p", "tfce_p", "clustere_p", "clusterm_p")) or "corrp" in name


def compare_maps(a_path, b_path, name, case):
    a = np.asarray(nib.load(a_path).dataobj, dtype=np.float64)
    b = np.asarray(nib.load(b_path).dataobj, dtype=np.float64)
    if a.shape != b.shape:
        return f"shapes differ {a.shape} vs {b.shape}", False
    if is_p_map(name):
        P = case.n_perm_used
        if case.exhaustive:
            bad = int(np.sum(np.abs(a - b) > 0.25 / P))
            return f"{bad} voxels differ (P = {P})", bad == 0
        if "corrp" in name:
            # Every voxel of an FWE map reads the same null (of the maximum), so the errors
            # of all voxels move together: bound the largest difference by the two-sample
            # Kolmogorov-Smirnov critical value at alpha = 0.001, 1.95 sqrt(2 / P).
            worst = float(np.max(np.abs(a - b)))
            bound = 1.95 * np.sqrt(2.0 / P)
            return f"largest difference {worst:.4f} (KS bound {bound:.4f}, P = {P})", worst <= bound
        p = 1.0 - b
        bound = 4.0 * np.sqrt(2.0 * p * (1.0 - p) / P) + 2.0 / P
        share = float(np.mean(np.abs(a - b) <= bound))
        return f"{100 * share:.2f}% within Monte Carlo error (P = {P})", share >= 0.99
    scale = max(float(np.max(np.abs(b))), 1e-6)
    rel = float(np.max(np.abs(a - b))) / scale
    return f"max relative difference {rel:.2e}", rel <= 1e-5


def compare_text(a_path, b_path, name):
    """The -P file (permutation vectors) and -N nulls: numbers line by line; -P identical,
    nulls (maximum statistics in f32) within 1e-5 relative, as the maps."""
    a = [[float(x) for x in l.split()] for l in open(a_path) if l.strip()]
    b = [[float(x) for x in l.split()] for l in open(b_path) if l.strip()]
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return f"{len(a)} vs {len(b)} lines", False
    if name.startswith("perm_"):
        bad = sum(x != y for x, y in zip(a, b))
        return f"{bad} of {len(a)} permutation vectors differ", bad == 0
    fa, fb = np.asarray(sum(a, [])), np.asarray(sum(b, []))
    # Nulls in the order the permutations ran: only comparable when both ran the same set.
    fa, fb = np.sort(fa), np.sort(fb)
    rel = float(np.max(np.abs(fa - fb))) / max(float(np.max(np.abs(fb))), 1e-6)
    return f"sorted values, max relative difference {rel:.2e}", rel <= 1e-5


def run_tool(cmd, cwd, env):
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--randomise", required=True)
    ap.add_argument("--voxflip", required=True)
    ap.add_argument("--work", default="/tmp/voxflip-randomise-compare")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    env = dict(os.environ, FSLOUTPUTTYPE="NIFTI_GZ")
    all_ok = True
    for i, case in enumerate(cases()):
        if only and case.name not in only:
            continue
        d = os.path.join(args.work, case.name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        rng = np.random.default_rng(1000 + i)
        inputs = case.build(d, rng)
        flags = inputs + case.flags + ["-n", str(case.n_perm)]
        r_run, r_t = run_tool([args.randomise] + flags + ["-o", "rand"], d, env)
        v_run, v_t = run_tool([args.voxflip] + flags + ["-o", "vox", "--no-report", "--quiet"], d, env)
        print(f"\n## {case.name}: {' '.join(flags)}")
        print(f"randomise exit {r_run.returncode} in {r_t:.1f} s; voxflip exit {v_run.returncode} in {v_t:.1f} s")
        for tool, run in (("randomise", r_run), ("voxflip", v_run)):
            if run.returncode != 0:
                print(f"{tool} failed:\n{run.stdout[-2000:]}")
                all_ok = False
        # randomise says how many permutations it ran and whether they were all of them
        # ("Doing all 1024 unique permutations" / "Doing 1000 random permutations"): that
        # sets the unit of p and how the p maps are compared.
        case.n_perm_used = case.n_perm
        for line in r_run.stdout.splitlines():
            if line.startswith("Doing "):
                nums = [int(w) for w in line.split() if w.isdigit()]
                if nums:
                    case.n_perm_used = nums[0]
                    case.exhaustive = line.startswith("Doing all")
                break
        if case.show_stdout:
            for tool, run in (("randomise", r_run), ("voxflip", v_run)):
                shown = [l for l in run.stdout.splitlines() if not l.startswith("randomise options")]
                print(f"{tool} printed: " + " | ".join(shown[-4:]))
        r_maps, v_maps = outputs_of(d, "rand"), outputs_of(d, "vox")
        names = sorted(set(r_maps) | set(v_maps))
        print(f"{'output':36} {'randomise':>9} {'voxflip':>8}  agreement")
        for name in names:
            has_r, has_v = name in r_maps, name in v_maps
            verdict = ""
            if has_r and has_v and r_maps[name].endswith(".nii.gz"):
                verdict, ok = compare_maps(v_maps[name], r_maps[name], name, case)
                if not ok and case.differs:
                    verdict += f"  (documented difference: {case.differs})"
                else:
                    verdict += "" if ok else "  <-- MISMATCH"
                    all_ok &= ok
            elif has_r and has_v and r_maps[name].endswith(".txt") and case.exhaustive:
                verdict, ok = compare_text(v_maps[name], r_maps[name], name)
                verdict += "" if ok else "  <-- MISMATCH"
                all_ok &= ok
            print(f"{name:36} {'yes' if has_r else '-':>9} {'yes' if has_v else '-':>8}  {verdict}")
    print("\nall agree" if all_ok else "\nsome outputs disagree (see MISMATCH above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
