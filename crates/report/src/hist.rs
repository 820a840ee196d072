//! The histogram of the permutation null of the maximum statistic (SVG via plotters).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::render::{fmt_num, xml_escape};

/// The histogram's size in pixels.
const SIZE: (u32, u32) = (480, 260);
const BINS: usize = 40;

/// A null distribution in equal bins over a range that holds it and the two marked values
/// (the observed maximum and the 5% FWE threshold), as the sidecar records it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bins {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u32>,
}

impl Bins {
    /// 40 bins of `null` (non-finite values skipped) over the range of the null and the
    /// finite ones of `observed` and `threshold`, widened when it is empty or one point.
    pub fn of(null: &[f32], observed: f32, threshold: f32) -> Bins {
        let null: Vec<f64> = null.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)).collect();
        let lines = [f64::from(threshold), f64::from(observed)];
        let (mut lo, mut hi) = null
            .iter()
            .chain(lines.iter().filter(|v| v.is_finite()))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        if !(lo.is_finite() && hi.is_finite()) {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo <= f64::EPSILON * lo.abs().max(1.0) * 16.0 {
            let pad = 0.5 * lo.abs().max(1.0);
            (lo, hi) = (lo - pad, hi + pad);
        }
        let width = (hi - lo) / BINS as f64;
        let mut counts = vec![0u32; BINS];
        for &v in &null {
            let b = (((v - lo) / width).floor() as usize).min(BINS - 1);
            counts[b] += 1;
        }
        Bins { lo, hi, counts }
    }
}

/// A histogram (SVG, 480x260) of a null of the maximum statistic in `bins`, with a dashed labelled line at the 5% FWE
/// `threshold` and a solid labelled line at the `observed` maximum (each left out if not
/// finite). The x range covers the null and both lines. Never panics: an empty or constant
/// null, or an observed value far from the null, still give a picture.
pub fn null_histogram_svg(bins: &Bins, observed: f32, threshold: f32, x_label: &str) -> String {
    let mut svg = String::new();
    let drawn = draw(&mut svg, bins, observed, threshold, x_label);
    match drawn {
        Ok(()) if svg.trim_start().starts_with("<svg") => svg.trim().to_string(),
        other => {
            if let Err(e) = other {
                log::warn!("null histogram not drawn: {e}");
            }
            format!(
                concat!(
                    r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">"#,
                    r#"<text x="10" y="20" font-family="sans-serif" font-size="12">"#,
                    r#"{label}: no histogram</text></svg>"#
                ),
                w = SIZE.0,
                h = SIZE.1,
                label = xml_escape(x_label)
            )
        }
    }
}

fn draw(svg: &mut String, bins: &Bins, observed: f32, threshold: f32, x_label: &str) -> Result<(), String> {
    let (obs, thr) = (f64::from(observed), f64::from(threshold));
    let (lo, hi, counts) = (bins.lo, bins.hi, &bins.counts);
    if !(lo.is_finite() && hi.is_finite() && hi > lo && !counts.is_empty()) {
        return Err("an empty range".into());
    }
    // The bins cover the data range; the axis adds a margin for the lines at its ends.
    let width = (hi - lo) / counts.len() as f64;
    let ymax = (counts.iter().copied().max().unwrap_or(0).max(1) as f64) * 1.15;
    let margin = 0.04 * (hi - lo);
    let (xlo, xhi) = (lo - margin, hi + margin);

    let e = |e: &dyn std::fmt::Display| e.to_string();
    {
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(xlo..xhi, 0f64..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_label)
            .y_desc("permutations")
            .x_labels(6)
            .y_labels(5)
            .draw()
            .map_err(|x| e(&x))?;
        let bar = RGBColor(120, 140, 200).filled();
        chart
            .draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], bar)
            }))
            .map_err(|x| e(&x))?;
        let font = ("sans-serif", 12).into_font();
        // A line's label goes on the side of it with more room.
        let mid = 0.5 * (xlo + xhi);
        let side = |x: f64| {
            if x > mid {
                Pos::new(HPos::Right, VPos::Top)
            } else {
                Pos::new(HPos::Left, VPos::Top)
            }
        };
        if thr.is_finite() {
            chart
                .draw_series(DashedLineSeries::new(vec![(thr, 0.0), (thr, ymax)], 6, 4, RED.stroke_width(2)))
                .map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("5% FWE {}", fmt_num(thr)),
                    (thr, ymax * 0.97),
                    font.clone().color(&RED).pos(side(thr)),
                )))
                .map_err(|x| e(&x))?;
        }
        if obs.is_finite() {
            chart
                .draw_series(LineSeries::new(vec![(obs, 0.0), (obs, ymax)], BLACK.stroke_width(2)))
                .map_err(|x| e(&x))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("observed {}", fmt_num(obs)),
                    (obs, ymax * 0.87),
                    font.color(&BLACK).pos(side(obs)),
                )))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(())
}
