"""Times the PyPI package `tfce` (exact TFCE) on maps exported by voxflip's tfce_maps
example and compares it with voxflip's exact TFCE of the same maps. Run by run.sh.

Definitions: both compute the exact integral  TFCE(v) = int_0^{T_v} e(h)^E h^H dh  with
e(h) the voxel count of v's component of the map thresholded at h, no step size; here
H = 2, E = 0.5, 6-connectivity (voxflip's -T defaults; the package defaults to 26 and is
told 6), positive part only (two_sided=False: voxflip enhances only T > 0, a contrast's
other direction being its own contrast). Sizes in voxels, not multiplied by voxel volume.
"""
import sys
import time

import numpy as np
import tfce

d, voxflip_txt = sys.argv[1], sys.argv[2]
nx, ny, nz, nmaps = map(int, open(f"{d}/dims.txt").read().split())
maps = np.fromfile(f"{d}/maps.f32", dtype="<f4").reshape(nmaps, nz, ny, nx)
ref = np.fromfile(f"{d}/voxflip_exact.f32", dtype="<f4").reshape(nmaps, nz, ny, nx)
mask = np.fromfile(f"{d}/mask.u8", dtype=np.uint8).reshape(nz, ny, nx).astype(bool)

times = []
worst_rel = 0.0
worst_abs_over_max = 0.0
for j in range(nmaps):
    vol = np.ascontiguousarray(maps[j].transpose(2, 1, 0))  # (nx, ny, nz), x the first axis
    tfce.tfce(vol, connectivity=6, E=0.5, H=2.0, two_sided=False, n_jobs=1)  # warm
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        out = tfce.tfce(vol, connectivity=6, E=0.5, H=2.0, two_sided=False, n_jobs=1)
        best = min(best, time.perf_counter() - t)
    times.append(best * 1e3)
    got = out.transpose(2, 1, 0)[mask].astype(np.float64)
    want = ref[j][mask].astype(np.float64)
    scale = want.max() if want.size else 1.0
    big = want > 1e-3 * scale
    if big.any():
        worst_rel = max(worst_rel, float(np.max(np.abs(got[big] - want[big]) / want[big])))
    worst_abs_over_max = max(worst_abs_over_max, float(np.max(np.abs(got - want)) / scale))

py_ms = float(np.median(times))
print(f"tfce {tfce.__version__} (exact, C6, H=2, E=0.5, one thread): median {py_ms:.2f} ms per map, "
      f"min {min(times):.2f} ms ({nmaps} maps, best of 3 each)")
print(f"agreement with voxflip's exact TFCE: max |diff| / map max = {worst_abs_over_max:.2e}; "
      f"max relative diff where TFCE > 1e-3 x map max = {worst_rel:.2e}")
for line in open(voxflip_txt):
    if line.startswith("one thread, exact, fast") or line.startswith("one thread, stepwise, fast"):
        name = line.split(":")[0]
        mean = float(line.split("mean ")[1].split(" ms")[0])
        print(f"{name}: mean {mean:.2f} ms per map; python tfce / voxflip = {py_ms / mean:.2f}x")
