//! The experiment report: several acquisition strategies × seeds, summarised as the paper's headline table
//! (win rate % ± s.e. across seeds, rows = strategies, columns = label budgets, best per column in bold) and a plot
//! of win rate vs labels with one line per strategy.

use crate::html::{self, escape_html};
use crate::svg::{self, Axis, Fmt, Frame, Mark};
use crate::ExperimentReport;

/// Mean and standard error (sample standard deviation / √n) of the finite values in `xs`.
///
/// The standard error is `None` for fewer than two values, where it is undefined. NaN and infinite values are
/// ignored (a failed seed must not poison the mean); with no finite value at all the mean is NaN.
pub fn mean_se(xs: &[f64]) -> (f64, Option<f64>) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, Some((var / n as f64).sqrt()))
}

/// The summary statistics of one table cell.
#[derive(Clone, Copy, Debug)]
struct Stat {
    mean: f64,
    se: Option<f64>,
    n: usize,
}

impl Stat {
    /// "67.0±1.2" in percent, or "67.0" for a single seed.
    fn text(&self) -> String {
        match self.se {
            Some(se) => format!("{:.1}±{:.1}", self.mean * 100.0, se * 100.0),
            None => format!("{:.1}", self.mean * 100.0),
        }
    }
}

/// The table behind both the text and the HTML rendering, so they always agree on order and on what is best.
struct Table {
    strategies: Vec<String>,
    labels: Vec<usize>,
    /// `stats[row][col]`: `None` where a strategy has no finite result at that budget.
    stats: Vec<Vec<Option<Stat>>>,
    best: Vec<Vec<bool>>,
}

fn build_table(e: &ExperimentReport) -> Table {
    let mut strategies: Vec<String> = Vec::new();
    for c in &e.cells {
        if !strategies.contains(&c.strategy) {
            strategies.push(c.strategy.clone());
        }
    }
    let mut labels: Vec<usize> = e.cells.iter().map(|c| c.labels).collect();
    labels.sort_unstable();
    labels.dedup();
    let stats: Vec<Vec<Option<Stat>>> = strategies
        .iter()
        .map(|s| {
            labels
                .iter()
                .map(|&l| {
                    // Repeated (strategy, labels) cells are merged: e.g. seeds reported by separate jobs.
                    let xs: Vec<f64> = e
                        .cells
                        .iter()
                        .filter(|c| &c.strategy == s && c.labels == l)
                        .flat_map(|c| c.win_rates.iter().copied())
                        .filter(|x| x.is_finite())
                        .collect();
                    if xs.is_empty() {
                        return None;
                    }
                    let (mean, se) = mean_se(&xs);
                    Some(Stat { mean, se, n: xs.len() })
                })
                .collect()
        })
        .collect();
    // Best per column, compared at the precision shown (tenths of a percent) so that visibly equal values tie.
    // Bold needs a comparison: a column with a single result marks nothing.
    let key = |st: &Stat| (st.mean * 1000.0).round() as i64;
    let mut best = vec![vec![false; labels.len()]; strategies.len()];
    for col in 0..labels.len() {
        let present: Vec<(usize, i64)> =
            (0..strategies.len()).filter_map(|row| stats[row][col].as_ref().map(|st| (row, key(st)))).collect();
        if present.len() < 2 {
            continue;
        }
        let top = present.iter().map(|p| p.1).max().unwrap_or(i64::MIN);
        for (row, k) in present {
            best[row][col] = k == top;
        }
    }
    Table { strategies, labels, stats, best }
}

/// The paper's table as plain text that is also valid Markdown: rows = strategies in first-seen order, columns =
/// label counts ascending, cells = win rate in percent "67.0±1.2" (mean ± s.e. across seeds; "67.0" for one
/// seed, "—" when missing), the best mean of each column in `**bold**`. Columns are padded so the text lines up.
/// With no cells at all the result is the line "no results yet".
pub fn experiment_table(e: &ExperimentReport) -> String {
    let t = build_table(e);
    if t.strategies.is_empty() {
        return "no results yet\n".to_string();
    }
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(t.strategies.len() + 1);
    let mut head = vec!["strategy / labels".to_string()];
    head.extend(t.labels.iter().map(|l| l.to_string()));
    rows.push(head);
    for (r, s) in t.strategies.iter().enumerate() {
        let mut row = vec![s.clone()];
        for c in 0..t.labels.len() {
            row.push(match &t.stats[r][c] {
                Some(st) if t.best[r][c] => format!("**{}**", st.text()),
                Some(st) => st.text(),
                None => "—".to_string(),
            });
        }
        rows.push(row);
    }
    // Width in characters, not bytes: "±" and "—" are multi-byte.
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| width(&r[c])).max().unwrap_or(1).max(3)).collect();
    let line = |row: &[String]| {
        let mut s = String::from("|");
        for (c, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[c] - width(cell));
            if c == 0 {
                s.push_str(&format!(" {cell}{pad} |"));
            } else {
                s.push_str(&format!(" {pad}{cell} |"));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&rows[0]);
    out.push('|');
    for (c, w) in widths.iter().enumerate() {
        // Markdown alignment: names left, numbers right.
        if c == 0 {
            out.push_str(&format!(":{}|", "-".repeat(w + 1)));
        } else {
            out.push_str(&format!("{}:|", "-".repeat(w + 1)));
        }
    }
    out.push('\n');
    for row in &rows[1..] {
        out.push_str(&line(row));
    }
    out
}

/// Renders an experiment report as one self-contained HTML page: the table of [`experiment_table`] and a plot
/// of win rate vs labels with one line per strategy and ± 1 s.e. error bars.
pub fn render_experiment(e: &ExperimentReport) -> String {
    let title = if e.title.trim().is_empty() { "activepref experiment" } else { e.title.as_str() };
    let t = build_table(e);
    let mut b = String::new();
    html::header(&mut b, title, &e.subtitle);

    b.push_str("<section id=\"table\">\n<h2>Win rate by strategy and label budget</h2>\n");
    if t.strategies.is_empty() {
        b.push_str("<p class=\"empty\">No results yet.</p>\n</section>\n");
    } else {
        let mut ns: Vec<usize> = t.stats.iter().flatten().flatten().map(|s| s.n).collect();
        ns.sort_unstable();
        ns.dedup();
        let seeds = match ns.as_slice() {
            [1] => "one seed per cell".to_string(),
            [n] => format!("{n} seeds per cell"),
            _ => "seeds per cell shown as n".to_string(),
        };
        w!(
            b,
            "<p class=\"caption\">Win rate % vs the baseline, mean ± standard error across seeds ({}); best of each \
             column in bold.</p>\n",
            seeds
        );
        b.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>strategy / labels</th>");
        for l in &t.labels {
            w!(b, "<th>{l}</th>");
        }
        b.push_str("</tr></thead>\n<tbody>\n");
        for (r, s) in t.strategies.iter().enumerate() {
            w!(b, "<tr><td>{}</td>", escape_html(s));
            for c in 0..t.labels.len() {
                match &t.stats[r][c] {
                    None => b.push_str("<td class=\"na\">—</td>"),
                    Some(st) => {
                        let mean = format!("{:.1}", st.mean * 100.0);
                        let mean = if t.best[r][c] { format!("<strong>{mean}</strong>") } else { mean };
                        let se = st.se.map(|se| format!(" <span class=\"se\">± {:.1}</span>", se * 100.0));
                        let n =
                            if ns.len() > 1 { format!(" <span class=\"se\">n={}</span>", st.n) } else { String::new() };
                        w!(b, "<td>{mean}{}{n}</td>", se.unwrap_or_default());
                    }
                }
            }
            b.push_str("</tr>\n");
        }
        b.push_str("</tbody>\n</table></div>\n</section>\n");
        plot_section(&mut b, &t);
    }
    html::notes(&mut b, &e.notes);
    html::page(title, &b)
}

fn plot_section(b: &mut String, t: &Table) {
    b.push_str("<section id=\"plot\">\n<h2>Win rate vs labels</h2>\n");
    b.push_str(
        "<p class=\"caption\">Mean across seeds with ± 1 standard error; strategies are nudged sideways so \
                their error bars do not hide each other.</p>\n",
    );
    if t.stats.iter().flatten().all(Option::is_none) {
        b.push_str("<p class=\"empty\">No finite results to plot.</p>\n</section>\n");
        return;
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for st in t.stats.iter().flatten().flatten() {
        let se = st.se.unwrap_or(0.0);
        lo = lo.min(st.mean - se);
        hi = hi.max(st.mean + se);
    }
    let (x_lo, x_hi) = (*t.labels.first().unwrap_or(&0) as f64, *t.labels.last().unwrap_or(&1) as f64);
    // Few budgets: tick exactly at them (as the paper's figures do); many: round-number ticks.
    let x = if t.labels.len() <= 12 && x_hi > x_lo {
        let pad = (x_hi - x_lo) * 0.05;
        Axis::fixed(x_lo - pad, x_hi + pad, &t.labels.iter().map(|&l| l as f64).collect::<Vec<_>>(), Fmt::Plain)
    } else {
        Axis::loose(x_lo, x_hi.max(x_lo + 1.0), 8, Fmt::Plain)
    };
    // Zoom in on the data (differences of a few points matter), but never outside 0..100%.
    let pad = ((hi - lo) * 0.08).max(0.01);
    let mut y = Axis::loose((lo - pad).max(0.0), (hi + pad).min(1.0), 7, Fmt::Percent);
    y.lo = y.lo.max(0.0);
    y.hi = y.hi.min(1.0);
    y.ticks.retain(|(v, _)| *v >= y.lo - 1e-9 && *v <= y.hi + 1e-9);
    let f = Frame { left: 70.0, top: 16.0, width: 700.0, height: 300.0, x, y, fs: 13.0 };
    let mut s = String::new();
    svg::open(&mut s, 960.0, 366.0, f.fs, "Win rate vs labels by strategy");
    f.draw_axes(&mut s, "labels acquired", "win rate vs baseline");
    f.hline(&mut s, 0.5, "#8a94a0", true);
    let n = t.strategies.len();
    let mut entries = Vec::new();
    for (r, name) in t.strategies.iter().enumerate() {
        let colour = svg::series_colour(r, n);
        let dx = (r as f64 - (n as f64 - 1.0) / 2.0) * 5.0;
        let pts: Vec<(f64, Stat)> =
            t.labels.iter().zip(&t.stats[r]).filter_map(|(&l, st)| st.map(|st| (l as f64, st))).collect();
        // The line is drawn through the nudged positions so dots sit on it.
        let shifted: Vec<String> =
            pts.iter().map(|(x, st)| format!("{:.1},{:.1}", f.px(*x) + dx, f.py(st.mean))).collect();
        if shifted.len() > 1 {
            w!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"{}\"/>",
                shifted.join(" ")
            );
        }
        for (x, st) in &pts {
            if let Some(se) = st.se {
                f.error_bar(&mut s, *x, dx, (st.mean - se).max(f.y.lo), (st.mean + se).min(f.y.hi), &colour, 8.0);
            }
        }
        for (x, st) in &pts {
            f.dot(&mut s, *x, dx, st.mean, 4.5, &colour);
        }
        entries.push((svg::clip(name, 22), colour, Mark::LineDot));
    }
    let legend_x = f.right() + 30.0;
    svg::text(
        &mut s,
        legend_x,
        f.top + 10.0,
        "start",
        &format!("font-weight=\"600\" fill=\"{}\"", svg::INK),
        "strategy",
    );
    svg::legend(&mut s, legend_x, f.top + 32.0, 13.0, &entries);
    svg::close(&mut s);
    // Wide plots keep a readable minimum width on phones and scroll sideways instead of shrinking.
    w!(b, "<div class=\"wide\">{s}</div>\n");
    b.push_str("</section>\n");
}
