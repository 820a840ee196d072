// The statistic of four (permutation, voxel) pairs from their folded sums: `usq` = |u|^2 over
// all q coefficients, `aux` = u_1 (t) or |u_1..s|^2 (F), `ss` = ||E[:, v]||^2, `inv_s` = 1/s
// as the host computed it. The WGSL twin of voxflip_stats::statistic_of_sums: the same
// operations in the same order (a driver may still round `/` and `sqrt` a few ULP apart).
// A uniform branch on the kind; ss <= 0 (or NaN) is selected away afterwards.
#import glm_params

fn statistic4(kind: u32, usq: vec4<f32>, aux: vec4<f32>, ss: vec4<f32>, dof: f32, inv_s: f32) -> vec4<f32> {
    let rss = max(ss - usq, ss * 1e-6);
    let inv_sigma2 = vec4<f32>(dof) / rss;
    var t: vec4<f32>;
    if (kind == KIND_T) {
        t = aux * sqrt(inv_sigma2);
    } else {
        t = aux * inv_s * inv_sigma2;
    }
    return select(vec4<f32>(0.0), t, ss > vec4<f32>(0.0));
}
