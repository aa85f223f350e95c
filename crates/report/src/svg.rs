//! Hand-rolled SVG plotting primitives: axes with "nice" ticks, lines, bars, error bars and legends.
//!
//! Why not a plotting crate: the report must stay dependency-free (serde only) and emit static markup that looks
//! the same in every browser with no JavaScript. The few shapes a report needs are simpler to write than to
//! configure. Styling uses presentation attributes rather than page CSS so an SVG copied out of the page still
//! renders correctly. Sizes are in viewBox units; the page CSS scales each SVG to its container's width.

use crate::html::escape_html;

/// Categorical colours (Tableau 10): distinguishable, and friendlier to colour-blind readers than pure hues.
pub(crate) const PALETTE: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
pub(crate) const INK: &str = "#1f2933";
pub(crate) const MUTED: &str = "#6b7280";
const GRID: &str = "#e8ebef";
const AXIS: &str = "#9aa3ae";
pub(crate) const ACCENT: &str = "#4e79a7";
pub(crate) const AGREE: &str = "#4e79a7";
pub(crate) const DISAGREE: &str = "#e15759";
pub(crate) const UNLABELLED: &str = "#b07aa1";
pub(crate) const SELECTED: &str = "#f28e2b";
pub(crate) const CANDIDATE: &str = "#cdd3db";
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";

/// Colour of series `i` out of `n`. Up to ten series get distinct categorical colours; beyond that a categorical
/// palette would repeat, so a sequential ramp (early rounds light-ish blue-purple, late rounds green-yellow) keeps
/// the order readable instead.
pub(crate) fn series_colour(i: usize, n: usize) -> String {
    if n <= PALETTE.len() {
        return PALETTE[i % PALETTE.len()].to_string();
    }
    // Viridis stops, the last one darkened so it stays visible on white.
    const STOPS: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (190.0, 170.0, 20.0)];
    let t = (i as f64 / (n - 1) as f64).clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let k = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The "nice" step nearest `x`: 1, 2 or 5 times a power of ten (after Heckbert, Graphics Gems, 1990).
fn nice_num(x: f64) -> f64 {
    let base = 10f64.powf(x.log10().floor());
    let f = x / base;
    let nf = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    nf * base
}

/// Round-number axis ticks covering `[lo, hi]`, about `target` of them: the step is 1, 2 or 5 × 10^k, the first
/// tick is ≤ `lo` and the last ≥ `hi` (a "loose" labelling, so axes end on round numbers).
///
/// A degenerate range (`lo == hi`) is widened around the value; non-finite input gives no ticks. The values are
/// snapped to the step's decimals, so 0.1 + 0.2 shows up as 0.3 rather than 0.30000000000000004.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(1e-300) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let target = target.max(2);
    // Heckbert first rounds the range to a nice number too; skipping that keeps steps closer to the target count
    // (0..512 in ~4 ticks gives a step of 200 rather than 500).
    let step = nice_num((hi - lo) / (target - 1) as f64);
    let start = (lo / step).floor();
    let end = (hi / step).ceil();
    let n = (end - start).round().clamp(1.0, 1000.0) as usize;
    let decimals = decimals_for(step) as i32;
    let scale = 10f64.powi(decimals);
    (0..=n)
        .map(|i| {
            let v = (start + i as f64) * step;
            // Snap to the step's precision and turn -0 into 0.
            let v = if decimals > 0 { (v * scale).round() / scale } else { v.round() };
            if v == 0.0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Ticks for a count axis from 0 to at least `max`: like [`nice_ticks`], but never a fractional step (half a pair
/// makes no sense), and at least 0 and 1.
pub(crate) fn count_ticks(max: f64, target: usize) -> Vec<f64> {
    let max = if max.is_finite() { max.max(1.0) } else { 1.0 };
    let t = nice_ticks(0.0, max, target);
    if t.len() >= 2 && t[1] - t[0] >= 1.0 {
        t
    } else {
        (0..=max.ceil() as usize).map(|v| v as f64).collect()
    }
}

/// How many decimals a tick label needs when ticks are `step` apart: the fewest that write the step exactly
/// (0.2 → 1, 0.25 → 2, 5 → 0), so neighbouring labels never collapse into the same text.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    (0..12)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(12)
}

/// How tick values are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fmt {
    Plain,
    /// Fractions shown as percentages ("50%").
    Percent,
    /// Absolute values, for mirrored axes whose lower half counts downwards.
    Abs,
}

fn fmt_tick(v: f64, step: f64, fmt: Fmt) -> String {
    let s = match fmt {
        Fmt::Plain => format!("{:.*}", decimals_for(step), v),
        Fmt::Abs => format!("{:.*}", decimals_for(step), v.abs()),
        Fmt::Percent => format!("{:.*}%", decimals_for(step * 100.0), v * 100.0),
    };
    // "-0" and "-0.0" come from rounding tiny negatives; they read as a bug.
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.' || c == '%') {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// One axis: the data range it maps onto the plot, and where its labelled ticks go.
#[derive(Clone, Debug)]
pub(crate) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// The domain widens to the outermost nice ticks, so the axis starts and ends on round numbers.
    pub fn loose(lo: f64, hi: f64, target: usize, fmt: Fmt) -> Axis {
        let t = nice_ticks(lo, hi, target);
        Self::from_ticks(&t, fmt).unwrap_or_else(|| Self::fallback(fmt))
    }

    /// The domain is exactly `[lo, hi]` (bars that must fill the plot); only the nice ticks inside are shown.
    pub fn tight(lo: f64, hi: f64, target: usize, fmt: Fmt) -> Axis {
        let t = nice_ticks(lo, hi, target);
        let Some(mut axis) = Self::from_ticks(&t, fmt) else { return Self::fallback(fmt) };
        let (lo, hi) = if hi > lo { (lo, hi) } else { (axis.lo, axis.hi) };
        let eps = (hi - lo) * 1e-9;
        axis.ticks.retain(|(v, _)| *v >= lo - eps && *v <= hi + eps);
        axis.lo = lo;
        axis.hi = hi;
        axis
    }

    /// Explicit ticks over an explicit domain.
    pub fn fixed(lo: f64, hi: f64, ticks: &[f64], fmt: Fmt) -> Axis {
        let step = if ticks.len() >= 2 { (ticks[1] - ticks[0]).abs() } else { 1.0 };
        Axis { lo, hi, ticks: ticks.iter().map(|&v| (v, fmt_tick(v, step, fmt))).collect() }
    }

    fn from_ticks(t: &[f64], fmt: Fmt) -> Option<Axis> {
        if t.len() < 2 {
            return None;
        }
        let step = t[1] - t[0];
        Some(Axis { lo: t[0], hi: t[t.len() - 1], ticks: t.iter().map(|&v| (v, fmt_tick(v, step, fmt))).collect() })
    }

    fn fallback(fmt: Fmt) -> Axis {
        Self::fixed(0.0, 1.0, &[0.0, 1.0], fmt)
    }
}

/// The rectangle a plot draws into (viewBox units) and the axes that map data onto it.
pub(crate) struct Frame {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub x: Axis,
    pub y: Axis,
    /// Base font size for tick labels; titles are scaled from it.
    pub fs: f64,
}

impl Frame {
    pub fn px(&self, v: f64) -> f64 {
        let span = self.x.hi - self.x.lo;
        let t = if span > 0.0 { (v - self.x.lo) / span } else { 0.5 };
        self.left + t * self.width
    }

    pub fn py(&self, v: f64) -> f64 {
        let span = self.y.hi - self.y.lo;
        let t = if span > 0.0 { (v - self.y.lo) / span } else { 0.5 };
        self.top + self.height - t * self.height
    }

    pub fn bottom(&self) -> f64 {
        self.top + self.height
    }

    pub fn right(&self) -> f64 {
        self.left + self.width
    }

    /// Horizontal grid lines with y tick labels, the x axis line with tick marks and labels, and axis titles.
    /// Vertical grid lines are left out on purpose: with several series they add clutter without helping reading.
    pub fn draw_axes(&self, s: &mut String, x_title: &str, y_title: &str) {
        let fs = self.fs;
        for (v, label) in &self.y.ticks {
            let y = self.py(*v);
            w!(
                s,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{GRID}\"/>",
                self.left,
                self.right()
            );
            text(s, self.left - 6.0, y + fs * 0.35, "end", &format!("fill=\"{MUTED}\""), label);
        }
        let b = self.bottom();
        w!(
            s,
            "<line x1=\"{:.1}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"{AXIS}\"/>",
            self.left,
            self.right()
        );
        for (v, label) in &self.x.ticks {
            let x = self.px(*v);
            w!(s, "<line x1=\"{x:.1}\" y1=\"{b:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{AXIS}\"/>", b + 4.0);
            text(s, x, b + 6.0 + fs, "middle", &format!("fill=\"{MUTED}\""), label);
        }
        if !x_title.is_empty() {
            let x = self.left + self.width / 2.0;
            text(s, x, b + 10.0 + 2.1 * fs, "middle", &format!("fill=\"{INK}\""), x_title);
        }
        if !y_title.is_empty() {
            let widest = self.y.ticks.iter().map(|(_, l)| l.chars().count()).max().unwrap_or(1) as f64;
            let x = self.left - 14.0 - widest * fs * 0.62 - fs * 0.5;
            let y = self.top + self.height / 2.0;
            w!(
                s,
                "<text transform=\"translate({x:.1} {y:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"{INK}\">{}</text>",
                escape_html(y_title)
            );
        }
    }

    /// A horizontal reference line across the plot at data value `v`.
    pub fn hline(&self, s: &mut String, v: f64, colour: &str, dash: bool) {
        if !(v.is_finite() && v >= self.y.lo.min(self.y.hi) && v <= self.y.hi.max(self.y.lo)) {
            return;
        }
        let y = self.py(v);
        let dash = if dash { " stroke-dasharray=\"5 4\"" } else { "" };
        w!(
            s,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"1.2\"{dash}/>",
            self.left,
            self.right()
        );
    }

    /// A vertical reference line at data value `v`.
    pub fn vline(&self, s: &mut String, v: f64, colour: &str, dash: bool) {
        if !(v.is_finite() && v >= self.x.lo && v <= self.x.hi) {
            return;
        }
        let x = self.px(v);
        let dash = if dash { " stroke-dasharray=\"4 3\"" } else { "" };
        w!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"1\"{dash}/>",
            self.top,
            self.bottom()
        );
    }

    /// A line through data points (non-finite points are skipped); a lone point becomes a dot so it stays visible.
    pub fn polyline(&self, s: &mut String, pts: &[(f64, f64)], colour: &str, width: f64, dash: bool) {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        match pts.len() {
            0 => {}
            1 => {
                let (x, y) = (self.px(pts[0].0), self.py(pts[0].1));
                w!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{:.1}\" fill=\"{colour}\"/>", width + 1.5);
            }
            _ => {
                s.push_str("<polyline fill=\"none\" stroke-linejoin=\"round\" stroke-linecap=\"round\" points=\"");
                for (i, (x, y)) in pts.iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    w!(s, "{:.1},{:.1}", self.px(*x), self.py(*y));
                }
                let dash = if dash { " stroke-dasharray=\"6 4\"" } else { "" };
                w!(s, "\" stroke=\"{colour}\" stroke-width=\"{width}\"{dash}/>");
            }
        }
    }

    /// A filled rectangle between data x values `x0..x1` and y values `y0..y1`, at least `min_px` tall so small
    /// non-zero counts stay visible next to large ones.
    #[allow(clippy::too_many_arguments)]
    pub fn bar(&self, s: &mut String, x0: f64, x1: f64, y0: f64, y1: f64, colour: &str, gap: f64, min_px: f64) {
        let (a, b) = (self.px(x0), self.px(x1));
        let (ya, yb) = (self.py(y0), self.py(y1));
        let (mut top, mut bot) = (ya.min(yb), ya.max(yb));
        if bot - top < min_px {
            // Grow away from the baseline y0.
            if yb <= ya {
                top = bot - min_px;
            } else {
                bot = top + min_px;
            }
        }
        let width = (b - a - gap).max(0.5);
        w!(
            s,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
            a + gap / 2.0,
            bot - top
        );
    }

    /// A vertical error bar from `lo` to `hi` (data y) at data x `x`, shifted `dx` viewBox units sideways.
    #[allow(clippy::too_many_arguments)]
    pub fn error_bar(&self, s: &mut String, x: f64, dx: f64, lo: f64, hi: f64, colour: &str, cap: f64) {
        if !(lo.is_finite() && hi.is_finite()) {
            return;
        }
        let x = self.px(x) + dx;
        let (a, b) = (self.py(lo), self.py(hi));
        w!(
            s,
            "<path d=\"M{x:.1} {a:.1}V{b:.1}M{:.1} {a:.1}h{:.1}M{:.1} {b:.1}h{:.1}\" stroke=\"{colour}\" stroke-width=\"1.4\" fill=\"none\"/>",
            x - cap / 2.0,
            cap,
            x - cap / 2.0,
            cap
        );
    }

    /// A dot with a white outline (reads well on top of lines and error bars).
    pub fn dot(&self, s: &mut String, x: f64, dx: f64, y: f64, r: f64, colour: &str) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        w!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{colour}\" stroke=\"#fff\" stroke-width=\"1.5\"/>",
            self.px(x) + dx,
            self.py(y)
        );
    }
}

/// Opens an `<svg>` whose width follows its container (viewBox only) and carries an accessible title.
pub(crate) fn open(s: &mut String, width: f64, height: f64, fs: f64, label: &str) {
    let label = escape_html(label);
    w!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{label}\" font-family=\"{FONT}\" font-size=\"{fs}\"><title>{label}</title>"
    );
}

pub(crate) fn close(s: &mut String) {
    s.push_str("</svg>\n");
}

/// A text element at viewBox coordinates; `attrs` adds raw attributes (fill, weight, size).
pub(crate) fn text(s: &mut String, x: f64, y: f64, anchor: &str, attrs: &str, content: &str) {
    w!(s, "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" {attrs}>{}</text>", escape_html(content));
}

/// How a legend entry is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mark {
    Line,
    Dashed,
    LineDot,
}

/// A vertical legend starting at (x, y): a short line sample then the label, one entry per row.
pub(crate) fn legend(s: &mut String, x: f64, y: f64, fs: f64, entries: &[(String, String, Mark)]) {
    let row = fs * 1.55;
    for (i, (label, colour, mark)) in entries.iter().enumerate() {
        let cy = y + i as f64 * row;
        let dash = if *mark == Mark::Dashed { " stroke-dasharray=\"5 3\"" } else { "" };
        w!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{cy:.1}\" x2=\"{:.1}\" y2=\"{cy:.1}\" stroke=\"{colour}\" stroke-width=\"2.2\"{dash}/>",
            x + 20.0
        );
        if *mark == Mark::LineDot {
            w!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{cy:.1}\" r=\"3.5\" fill=\"{colour}\" stroke=\"#fff\" stroke-width=\"1\"/>",
                x + 10.0
            );
        }
        text(s, x + 26.0, cy + fs * 0.35, "start", &format!("fill=\"{INK}\""), label);
    }
}

/// Shortens a label to `max` characters with an ellipsis (legends have fixed room).
pub(crate) fn clip(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_no_float_noise_or_negative_zero() {
        let a = Axis::loose(0.0, 0.3, 4, Fmt::Plain);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.1", "0.2", "0.3"]);
        assert_eq!(fmt_tick(-0.00001, 0.1, Fmt::Plain), "0.0");
        assert_eq!(fmt_tick(0.5, 0.1, Fmt::Percent), "50%");
        assert_eq!(fmt_tick(0.025, 0.005, Fmt::Percent), "2.5%");
        assert_eq!(fmt_tick(-20.0, 10.0, Fmt::Abs), "20");
    }

    #[test]
    fn tight_axis_keeps_the_data_domain() {
        let a = Axis::tight(0.13, 0.87, 4, Fmt::Plain);
        assert_eq!((a.lo, a.hi), (0.13, 0.87));
        assert!(a.ticks.iter().all(|(v, _)| *v >= 0.13 && *v <= 0.87));
        assert!(!a.ticks.is_empty());
    }

    #[test]
    fn many_series_get_distinct_ramp_colours() {
        let cs: Vec<String> = (0..12).map(|i| series_colour(i, 12)).collect();
        for i in 1..cs.len() {
            assert_ne!(cs[i - 1], cs[i]);
        }
        assert_eq!(series_colour(0, 3), PALETTE[0]);
    }
}
