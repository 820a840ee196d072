//! The report's page: sections, tables and the inline pictures.
use super::{map_path, missing, volume, Background};
use crate::error::Result;
use crate::summary::Histogram;
use crate::summary::{ContrastSummary as ContrastRecord, RunReport as Sidecar};
use std::fmt::Write;
use std::path::PathBuf;
use voxflip_atlas::Atlas;
use voxflip_report::{DisplayGrid, Overlay, Volume};

/// Axial slices in a mosaic.
const MOSAIC_SLICES: usize = 20;
/// The FWE level the pictures and tables show.
const ALPHA: f64 = 0.05;

/// `&`, `<`, `>` and quotes as entities.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn img(uri: &str, alt: &str, class: &str) -> String {
    format!("<img class=\"{class}\" alt=\"{}\" src=\"{uri}\">", esc(alt))
}

fn svg_img(svg: &str, alt: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(svg.as_bytes());
    img(&format!("data:image/svg+xml;base64,{b64}"), alt, "svg")
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
th{background:#f3f3f3}table.sortable th{cursor:pointer}table.sortable th:after{content:" \2195";color:#aaa}
.warn{background:#fff4e0;border-left:4px solid #f0a000;padding:.5em 1em;margin:.5em 0}
.note{color:#555;font-size:.9em}img{max-width:100%;image-rendering:pixelated}img.svg{image-rendering:auto}
.pics{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
@media print{h2{page-break-before:always}.pics{display:block}#image-check{display:none}}
"#;

/// Sorting on a click on a header; the image check a headless browser reads back.
const SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
    rows.sort(function(x,y){var a=x.cells[i].textContent,c=y.cells[i].textContent,na=parseFloat(a),nc=parseFloat(c);
      var r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?r:-r;});
    rows.forEach(function(r){b.appendChild(r);});});});});
window.addEventListener('load',function(){
  var imgs=Array.prototype.slice.call(document.images),ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
  var d=document.getElementById('image-check');d.setAttribute('data-total',imgs.length);d.setAttribute('data-decoded',ok);
  d.textContent=ok+' of '+imgs.length+' images decoded';});
"#;

/// The page of the run named `prefix`, its files read from `files` (see `build_from`).
pub fn page(files: &str, prefix: &str, s: &Sidecar, bg: &Background, atlases: &[Atlas]) -> Result<String> {
    let mut h = String::new();
    let title = format!(
        "voxflip report: {}",
        PathBuf::from(prefix).file_name().map_or(prefix.into(), |f| f.to_string_lossy().into_owned())
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<p class=\"note\">voxflip {} · run ended {} · {}</p>",
        esc(&s.version),
        esc(&s.date),
        esc(&bg.what)
    );
    run_section(&mut h, s);
    warnings(&mut h, s);
    let grid = DisplayGrid::covering(&bg.volume);
    for c in &s.contrasts {
        contrast_section(&mut h, files, s, c, bg, &grid, atlases)?;
    }
    let _ = write!(h, "<p id=\"image-check\" class=\"note\">images not checked (scripts off)</p>\n<script>{SCRIPT}</script>\n</body></html>\n");
    Ok(h)
}

fn row(h: &mut String, k: &str, v: &str) {
    let _ = writeln!(h, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
}

fn run_section(h: &mut String, s: &Sidecar) {
    h.push_str("<h2>The run</h2>\n<table>\n");
    row(h, "command line", &format!("<span class=\"mono\">{}</span>", esc(&s.command_line.join(" "))));
    row(h, "input", &format!("<span class=\"mono\">{}</span> ({} images)", esc(&s.input), s.n_images));
    row(
        h,
        "mask",
        &s.mask
            .as_deref()
            .map_or("none (every voxel that varies)".into(), |m| format!("<span class=\"mono\">{}</span>", esc(m))),
    );
    let g = &s.grid;
    row(
        h,
        "grid",
        &format!(
            "{} × {} × {} voxels of {} × {} × {} mm; {} voxels analysed",
            g.dims[0], g.dims[1], g.dims[2], g.voxel_mm[0], g.voxel_mm[1], g.voxel_mm[2], s.n_voxels
        ),
    );
    let dropped = if s.voxels_dropped.is_empty() {
        "none".to_string()
    } else {
        s.voxels_dropped.iter().map(|d| format!("{} ({})", d.count, esc(&d.reason))).collect::<Vec<_>>().join("; ")
    };
    row(h, "voxels dropped", &dropped);
    let mut kinds = String::new();
    for c in &s.contrasts {
        let _ = write!(
            kinds,
            "{}: {} {} {} ({}); ",
            esc(&c.name),
            c.permutations,
            if c.exhaustive { "exhaustive" } else { "random" },
            c.permutation_kind.words(),
            esc(&c.permutation_reason)
        );
    }
    row(h, "permutations", &format!("{}requested {}, seed {}", kinds, s.permutations_requested, s.seed));
    if let Some(b) = &s.exchangeability_blocks {
        row(
            h,
            "exchangeability blocks",
            &format!(
                "{} ({})",
                b.count,
                if b.whole { "whole blocks exchanged" } else { "rows exchanged within blocks" }
            ),
        );
    }
    let spatial = s.spatial_backend.as_deref().map_or(String::new(), |b| format!("; TFCE/clusters on {}", esc(b)));
    row(h, "engine", &format!("{}{spatial}", esc(&s.backend)));
    let times: Vec<String> = s.contrasts.iter().map(|c| format!("{} {:.1} s", esc(&c.name), c.seconds)).collect();
    row(h, "time", &format!("{:.1} s in all ({})", s.seconds_total, times.join(", ")));
    if let Some(sh) = &s.shards {
        row(h, "shards", &format!("merged from {} shards", sh.len()));
    }
    h.push_str("</table>\n<h3>Design</h3>\n<div class=\"pics\">");
    let d = &s.design;
    let groups: Option<Vec<usize>> = d.blocks.as_ref().map(|b| b.iter().map(|&x| x as usize).collect());
    let png = voxflip_report::design_matrix(&d.matrix, groups.as_deref());
    let _ = write!(
        h,
        "<figure>{}<figcaption class=\"note\">{} rows (images) × {} columns: {}{}</figcaption></figure>",
        img(&png.data_uri(), "design matrix", "design"),
        d.matrix.len(),
        d.columns.len(),
        esc(&d.columns.join(", ")),
        if groups.is_some() { "; the strip on the left: exchangeability blocks" } else { "" }
    );
    h.push_str("<table><tr><th>contrast</th><th>label</th>");
    for c in &d.columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>\n");
    for c in &s.contrasts {
        for (i, w) in c.weights.iter().enumerate() {
            let name = if i == 0 { format!("{} ({:?})", esc(&c.name), c.kind) } else { String::new() };
            let label = if i == 0 { esc(&c.label) } else { String::new() };
            let _ = write!(h, "<tr><td>{name}</td><td>{label}</td>");
            for x in w {
                let _ = write!(h, "<td>{x}</td>");
            }
            h.push_str("</tr>\n");
        }
    }
    h.push_str("</table></div>\n");
}

/// What a careful reviewer would point out, each once with the contrasts it concerns.
fn warnings<'a>(h: &mut String, s: &'a Sidecar) {
    let mut w: Vec<(String, Vec<&'a str>)> = Vec::new();
    let mut add = |msg: String, name: &'a str| match w.iter_mut().find(|(m, _)| *m == msg) {
        Some((_, names)) => names.push(name),
        None => w.push((msg, vec![name])),
    };
    for c in &s.contrasts {
        if !c.exhaustive && c.permutations < 1000 {
            add(
                format!(
                    "only {} random permutations: a p-value near 0.05 is uncertain by about ±{:.3} (two standard errors); use -n 5000 or more for a paper",
                    c.permutations,
                    2.0 * (0.05f64 * 0.95 / c.permutations as f64).sqrt()
                ),
                &c.name,
            );
        }
        let pmin = 1.0 / c.permutations.max(1) as f64;
        if pmin > ALPHA {
            add(
                format!(
                    "the smallest achievable p is 1/{} = {pmin:.3}, above 0.05: nothing can be significant",
                    c.permutations
                ),
                &c.name,
            );
        }
        if c.dof < 10.0 {
            add(format!("{} degrees of freedom: the variance estimates are noisy", c.dof), &c.name);
        }
        if !c.permutation_reason.contains("--perm-kind") {
            add(format!("{} chosen automatically ({}); check that this is what the design needs, or choose with --perm-kind", c.permutation_kind.words(), c.permutation_reason), &c.name);
        }
    }
    let dropped: usize = s.voxels_dropped.iter().map(|d| d.count).sum();
    h.push_str("<h3>Warnings</h3>\n");
    if dropped * 20 > s.n_voxels + dropped {
        let _ = writeln!(h, "<div class=\"warn\">{dropped} voxels of the mask were dropped (more than 5%)</div>");
    } else if w.is_empty() {
        h.push_str("<p class=\"note\">none</p>\n");
    }
    for (msg, names) in w {
        let _ = writeln!(h, "<div class=\"warn\">{}: {}</div>", esc(&names.join(", ")), esc(&msg));
    }
}

/// One corrected map of a contrast.
struct Correction<'a> {
    key: &'static str,
    title: String,
    histogram: &'a Histogram,
    observed: f32,
    threshold: f32,
    significant: usize,
    x_label: &'static str,
}

fn corrections(c: &ContrastRecord) -> Vec<Correction<'_>> {
    let mut v = vec![Correction {
        key: "vox",
        title: "voxelwise (max-statistic FWE)".into(),
        histogram: &c.null_histogram,
        observed: c.max_stat,
        threshold: c.fwe05_threshold,
        significant: c.voxels_fwe05,
        x_label: "maximum statistic",
    }];
    for s in &c.spatial {
        let (key, title, x_label) = match s.statistic.as_str() {
            "tfce" => ("tfce", "TFCE (FWE)".to_string(), "maximum TFCE"),
            "clustere" => (
                "clustere",
                format!("cluster extent (FWE), clusters above {}", s.cluster_threshold.unwrap_or(0.0)),
                "largest cluster (voxels)",
            ),
            "clusterm" => (
                "clusterm",
                format!("cluster mass (FWE), clusters above {}", s.cluster_threshold.unwrap_or(0.0)),
                "largest cluster mass",
            ),
            _ => continue,
        };
        v.push(Correction {
            key,
            title,
            histogram: &s.null_histogram,
            observed: s.observed_max,
            threshold: s.fwe05_threshold,
            significant: s.voxels_fwe05,
            x_label,
        });
    }
    v
}

fn contrast_section(
    h: &mut String,
    prefix: &str,
    s: &Sidecar,
    c: &ContrastRecord,
    bg: &Background,
    grid: &DisplayGrid,
    atlases: &[Atlas],
) -> Result<()> {
    let _ = writeln!(h, "<h2>{}: {}</h2>", esc(&c.name), esc(&c.label));
    let _ = writeln!(
        h,
        "<p>{:?} statistic, {} degrees of freedom, maximum {:.3}; {} {} permutations.</p>",
        c.kind,
        c.dof,
        c.max_stat,
        c.permutations,
        if c.exhaustive { "(all of them)" } else { "random" }
    );
    let stat_path = map_path(prefix, s, &c.name);
    if !stat_path.exists() {
        return Err(missing(&stat_path));
    }
    let stat = volume(&stat_path)?;
    let tables = Tables::read(prefix, &c.name, atlases);
    for k in corrections(c) {
        let corrp_path = map_path(prefix, s, &format!("{}_corrp_{}", k.key, c.name));
        let _ = writeln!(h, "<h3>{} — {}</h3>", esc(&c.name), esc(&k.title));
        if !corrp_path.exists() {
            let _ = writeln!(
                h,
                "<p class=\"note\">no corrected p map ({}): not requested (-x writes the voxelwise one)</p>",
                // The file's name without the prefix, which may be the temporaries'.
                esc(&format!("_{}_corrp_{}", k.key, c.name))
            );
            continue;
        }
        let corrp = volume(&corrp_path)?;
        // The stored value of p = 0.05 in the run's convention, computed as the run stores it.
        let level =
            if s.logp { voxflip_stats::PScale::NegLog10 } else { voxflip_stats::PScale::OneMinusP }.apply(ALPHA);
        let shown =
            Volume { data: corrp.data.iter().map(|&x| f32::from(u8::from(x > 0.0 && x >= level))).collect(), ..corrp };
        let vals: Vec<f32> = stat.data.iter().zip(&shown.data).filter(|(_, &m)| m > 0.0).map(|(&x, _)| x).collect();
        let n_shown = vals.len();
        let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let overlay = Overlay { values: &stat, shown: &shown, range: (lo, if hi > lo { hi } else { lo + 1.0 }) };
        let peak = peak_mm(&stat, &shown);
        let _ = writeln!(
            h,
            "<p>{} voxels significant at FWE {ALPHA} (observed maximum {:.3}, 5% FWE threshold {:.3}). Coloured: the {} map where the corrected p ≤ {ALPHA}{}.</p>",
            k.significant,
            k.observed,
            k.threshold,
            esc(&c.name),
            if n_shown == 0 { "; nothing to colour".to_string() } else { format!(", from {lo:.2} to {hi:.2}") }
        );
        let ov = (n_shown > 0).then_some(&overlay);
        let (mosaic, layout) = voxflip_report::mosaic(&bg.volume, ov, grid, MOSAIC_SLICES);
        let zs: Vec<String> = layout.slices_mm.iter().map(|z| format!("{z:.0}")).collect();
        let _ = write!(
            h,
            "<figure><img class=\"mosaic\" alt=\"{} {} axial mosaic\" data-slices-mm=\"{}\" data-columns=\"{}\" data-tile=\"{},{}\" data-scale=\"{}\" data-origin-mm=\"{},{},{}\" data-step-mm=\"{}\" src=\"{}\">",
            esc(&c.name),
            k.key,
            zs.join(","),
            layout.columns,
            layout.tile.0,
            layout.tile.1,
            layout.scale,
            grid.origin_mm[0],
            grid.origin_mm[1],
            grid.origin_mm[2],
            grid.step_mm,
            mosaic.data_uri()
        );
        let _ = writeln!(h, "<figcaption class=\"note\">axial slices at z = {} mm (left of the picture = subject's left; anterior up)</figcaption></figure>", zs.join(", "));
        h.push_str("<div class=\"pics\">");
        let ortho = voxflip_report::orthogonal(&bg.volume, ov, grid, peak);
        let _ = write!(
            h,
            "<figure>{}<figcaption class=\"note\">through the {} at ({:.0}, {:.0}, {:.0}) mm: sagittal, coronal, axial</figcaption></figure>",
            img(&ortho.data_uri(), "orthogonal view", "ortho"),
            if n_shown > 0 { "strongest significant voxel" } else { "maximum" },
            peak[0],
            peak[1],
            peak[2]
        );
        if n_shown > 0 {
            let glass = voxflip_report::glass_brain(&bg.volume, &overlay, grid);
            let _ = write!(h, "<figure>{}<figcaption class=\"note\">glass brain (maximum-intensity projections)</figcaption></figure>", img(&glass.data_uri(), "glass brain", "glass"));
            let bar =
                voxflip_report::colour_bar_svg(lo, overlay.range.1, &format!("{} where corrected p ≤ {ALPHA}", c.name));
            let _ = write!(
                h,
                "<figure>{}<figcaption class=\"note\">colour scale</figcaption></figure>",
                svg_img(&bar, "colour bar")
            );
        }
        let hg = k.histogram;
        let hist = voxflip_report::null_histogram_svg(hg, k.observed, k.threshold, k.x_label);
        let _ = write!(
            h,
            "<figure>{}<figcaption class=\"note\">null of the {} over the permutations</figcaption></figure>",
            svg_img(&hist, "null distribution"),
            k.x_label
        );
        h.push_str("</div>\n");
        tables.write(h, k.key, &c.name);
        label_summary(h, atlases, &stat, &shown);
    }
    Ok(())
}

/// World mm of the largest statistic among the shown voxels (or overall, if none shown).
fn peak_mm(stat: &Volume, shown: &Volume) -> [f64; 3] {
    let any = shown.data.iter().any(|&m| m > 0.0);
    let mut best = (f32::NEG_INFINITY, 0usize);
    for (i, (&x, &m)) in stat.data.iter().zip(&shown.data).enumerate() {
        if (!any || m > 0.0) && x > best.0 {
            best = (x, i);
        }
    }
    index_mm(stat, best.1)
}

/// World mm of the voxel at linear index `i` (x fastest) of `v`'s grid.
fn index_mm(v: &Volume, i: usize) -> [f64; 3] {
    let [nx, ny, _] = v.dims;
    v.voxel_to_world([(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64])
}

/// A contrast's cluster and local-maximum tables, labelled with the report's atlases.
struct Tables {
    clusters: Option<String>,
    lmax: Option<String>,
}

impl Tables {
    fn read(prefix: &str, name: &str, atlases: &[Atlas]) -> Tables {
        let read = |what: &str| {
            std::fs::read_to_string(format!("{prefix}_{what}_{name}.tsv"))
                .ok()
                .map(|t| crate::labels::with_labels(&t, atlases))
        };
        Tables { clusters: read("clusters"), lmax: read("lmax") }
    }

    fn write(&self, h: &mut String, key: &str, name: &str) {
        for (what, tsv) in [("clusters", &self.clusters), ("local maxima", &self.lmax)] {
            let Some(tsv) = tsv else { continue };
            let mut lines = tsv.lines();
            let Some(header) = lines.next() else { continue };
            let rows: Vec<&str> = lines.filter(|l| l.split('\t').next() == Some(key)).collect();
            let _ = write!(h, "<h4>{} {what} ({} rows)</h4>", esc(name), rows.len());
            if rows.is_empty() {
                continue;
            }
            h.push_str("<table class=\"sortable\"><thead><tr>");
            for c in header.split('\t').skip(1) {
                let _ = write!(h, "<th>{}</th>", esc(c));
            }
            h.push_str("</tr></thead><tbody>\n");
            for r in rows {
                h.push_str("<tr>");
                for c in r.split('\t').skip(1) {
                    let _ = write!(h, "<td>{}</td>", esc(c));
                }
                h.push_str("</tr>\n");
            }
            h.push_str("</tbody></table>\n");
        }
    }
}

/// For each label atlas: how many significant voxels fall in each of its regions (every
/// region listed, so a region with none shows as 0).
fn label_summary(h: &mut String, atlases: &[Atlas], stat: &Volume, shown: &Volume) {
    for a in atlases.iter().filter(|a| a.kind() == voxflip_atlas::AtlasKind::Label) {
        let mut counts: Vec<(String, usize)> = a.labels().map(|(_, n)| (n.to_string(), 0)).collect();
        for (i, _) in shown.data.iter().enumerate().filter(|(_, &m)| m > 0.0) {
            if let Some(l) = a.label_at(index_mm(stat, i)) {
                if let Some(e) = counts.iter_mut().find(|e| e.0 == l.name) {
                    e.1 += 1;
                }
            }
        }
        let _ = write!(h, "<h4>significant voxels per region of {}</h4><table class=\"sortable\"><thead><tr><th>region</th><th>voxels</th></tr></thead><tbody>", esc(&a.name));
        for (n, k) in counts {
            let _ = write!(h, "<tr><td>{}</td><td>{k}</td></tr>", esc(&n));
        }
        h.push_str("</tbody></table>\n");
    }
}
