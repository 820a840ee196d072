#!/usr/bin/env python3
"""voxflip's answers against nilearn's permuted_ols, an independent implementation.

Not part of CI. Run in a throwaway environment:

    python3 -m venv /tmp/nl && /tmp/nl/bin/pip install nilearn
    cargo run --release -- simulate --out /tmp/sim --grid small
    /tmp/nl/bin/python benches/nilearn_agree.py /tmp/sim 2000 target/release/voxflip [tfce]

Three second-level designs on the simulated study, each run by both tools with the same
number of permutations (different random draws):
  - two groups with an age covariate, group A > B (both permute rows);
  - the mean with a raw (not demeaned) age covariate (both sign-flip: nilearn because the
    tested variable is the intercept, voxflip because the contrast tests the constant);
  - the age slope with an intercept (both permute rows).
It prints the largest difference of the observed t maps (float rounding only) and of the
FWE-corrected p-values (Monte Carlo error only: about sqrt(p(1-p)/P) per tool), and the
number of voxels each calls significant at 0.05.

With a fourth argument `tfce`, it also runs the first design with TFCE in both tools and
compares the observed TFCE maps (the same discretization for the observed map: 100 steps
of max/100, not multiplied by dh, 6-connectivity) and the TFCE FWE p-values. Those differ by
design: nilearn gives every permuted map its own step (its own max / 100) without
multiplying by it, so a null map with a lower maximum gets the same 100 steps and a
relatively larger TFCE; randomise and voxflip keep the observed step for every map (PALM
uses each map's step but multiplies by it), so their nulls approximate the same integral.
voxflip's exact integral (--tfce-exact) is printed as the reference for that.
"""
import sys, os, subprocess, json, numpy as np, nibabel as nib
from nilearn.mass_univariate import permuted_ols
sim = sys.argv[1]; nperm = int(sys.argv[2]); V = sys.argv[3]
out = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'voxflip_nilearn_agree'); os.makedirs(out, exist_ok=True)
post = nib.load(f'{sim}/post.nii.gz').get_fdata(dtype=np.float32)
pre = nib.load(f'{sim}/pre.nii.gz').get_fdata(dtype=np.float32)
mimg = nib.load(f'{sim}/mask.nii.gz'); mask = mimg.get_fdata() > 0
groups = [l.split('\t')[1].strip() for l in open(f'{sim}/participants.tsv').read().splitlines()[1:]]
g = np.array([1.0 if x == groups[0] else 0.0 for x in groups]); n = len(g)
rng = np.random.default_rng(3); age = rng.normal(40, 10, n)
diff4d = post - pre
def write4d(a, path):
    nib.save(nib.Nifti1Image(a.astype(np.float32), mimg.affine), path)
write4d(diff4d, f'{out}/diff.nii.gz'); write4d(post, f'{out}/post.nii.gz')
def vest(path, rows, key):
    rows = np.atleast_2d(rows)
    with open(path, 'w') as f:
        f.write(f'/NumWaves {rows.shape[1]}\n/{key} {rows.shape[0]}\n/Matrix\n')
        for r in rows: f.write(' '.join(f'{x:.6f}' for x in r) + '\n')
cases = [
  # name, data, design, contrast, nilearn tested, nilearn confounds
  ('twosample_age', diff4d, np.column_stack([g, 1-g, age]), [1,-1,0], g[:,None], np.column_stack([np.ones(n), age])),
  ('mean_age_raw', post, np.column_stack([np.ones(n), age]), [1,0], np.ones((n,1)), age[:,None]),
  ('slope_age', post, np.column_stack([np.ones(n), age - age.mean()]), [0,1], (age-age.mean())[:,None], np.ones((n,1))),
]
for name, data, M, c, tested, conf in cases:
    vest(f'{out}/{name}.mat', M, 'NumPoints'); vest(f'{out}/{name}.con', np.array(c, float), 'NumContrasts')
    inp = f'{out}/diff.nii.gz' if data is diff4d else f'{out}/post.nii.gz'
    r = subprocess.run([V, '-i', inp, '-m', f'{sim}/mask.nii.gz', '-d', f'{out}/{name}.mat', '-t', f'{out}/{name}.con',
                        '-o', f'{out}/{name}', '-n', str(nperm), '-x', '--uncorrp', '--quiet', '--backend', 'cpu'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t_vf = nib.load(f'{out}/{name}_tstat1.nii.gz').get_fdata()[mask]
    p_vf = 1 - nib.load(f'{out}/{name}_vox_corrp_tstat1.nii.gz').get_fdata()[mask]
    kind = json.load(open(f'{out}/{name}_voxflip.json'))['contrasts'][0]['permutation_kind']
    Y = data[mask].T
    res = permuted_ols(tested, Y, confounding_vars=conf, model_intercept=False, n_perm=nperm, two_sided_test=False, random_state=0, n_jobs=2, verbose=0, output_type='dict')
    t_nl = res['t'][0]; p_nl = 10 ** -res['logp_max_t'][0]
    sel = p_nl < 0.5
    print(f'{name}: voxflip {kind}; max |t diff| {np.max(np.abs(t_vf - t_nl)):.2e} (max t {t_nl.max():.2f}); '
          f'FWE p: max |diff| {np.max(np.abs(p_vf - p_nl)):.3f}, mean |diff| where p<0.5 {np.mean(np.abs(p_vf-p_nl)[sel]) if sel.any() else 0:.4f}; '
          f'sig(0.05) voxflip {np.sum(p_vf<=0.05)} nilearn {np.sum(p_nl<=0.05)}; fwe thr quantile null: {np.sort(res["h0_max_t"][0])[int(0.95*nperm)]:.3f}')

if len(sys.argv) > 4 and sys.argv[4] == 'tfce':
    from nilearn.maskers import NiftiMasker
    name, data, M, c, tested, conf = cases[0]
    runs = {}
    for tag, extra in [('step', []), ('exact', ['--tfce-exact'])]:
        r = subprocess.run([V, '-i', f'{out}/diff.nii.gz', '-m', f'{sim}/mask.nii.gz', '-d', f'{out}/{name}.mat', '-t', f'{out}/{name}.con',
                            '-o', f'{out}/{name}_{tag}', '-n', str(nperm), '-T', '--quiet', '--backend', 'cpu'] + extra, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[tag] = (nib.load(f'{out}/{name}_{tag}_tfce_tstat1.nii.gz').get_fdata()[mask],
                     1 - nib.load(f'{out}/{name}_{tag}_tfce_corrp_tstat1.nii.gz').get_fdata()[mask])
    res = permuted_ols(tested, data[mask].T, confounding_vars=conf, model_intercept=False, n_perm=nperm, two_sided_test=False,
                       random_state=0, n_jobs=2, verbose=0, output_type='dict', tfce=True, masker=NiftiMasker(mimg).fit())
    tf_nl, p_nl = res['tfce'][0], 10 ** -res['logp_max_tfce'][0]
    tf_vf, p_vf = runs['step']
    print(f'{name} TFCE: observed maps max |diff| {np.max(np.abs(tf_vf - tf_nl)):.3g} (max {tf_nl.max():.1f}); '
          f'FWE-significant voxels: voxflip {np.sum(p_vf <= 0.05)}, voxflip exact integral {np.sum(runs["exact"][1] <= 0.05)}, nilearn {np.sum(p_nl <= 0.05)}')
