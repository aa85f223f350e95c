//! The experiment report: several acquisition strategies × seeds, summarised as the paper's headline table
//! (win rate % ± s.e. across seeds, or "mean [lo, hi]" with bootstrap intervals when the report carries
//! [`ExperimentStats`]; rows = strategies, columns = label budgets, best per column in bold), the difference to the
//! baseline strategy and the label savings when it has them, and a plot of win rate vs labels with one line per
//! strategy.

use crate::html::{self, escape_html};
use crate::svg::{self, Axis, Fmt, Frame, Mark};
use crate::{ExperimentReport, ExperimentStats, Savings};

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
    /// The bootstrap interval, when the report has statistics.
    ci: Option<(f64, f64)>,
}

impl Stat {
    /// "67.0±1.2" in percent, "67.0" for a single seed, or "67.0 [65.1, 69.0]" with an interval.
    fn text(&self) -> String {
        match (self.ci, self.se) {
            (Some((lo, hi)), _) => format!("{:.1} [{:.1}, {:.1}]", self.mean * 100.0, lo * 100.0, hi * 100.0),
            (None, Some(se)) => format!("{:.1}±{:.1}", self.mean * 100.0, se * 100.0),
            (None, None) => format!("{:.1}", self.mean * 100.0),
        }
    }

    /// The error bar: the interval, else ± 1 s.e.
    fn bar(&self) -> Option<(f64, f64)> {
        self.ci.or(self.se.map(|se| (self.mean - se, self.mean + se)))
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
    let stat_cells = e.stats.iter().flat_map(|s| s.cells.iter().map(|c| (&c.strategy, c.labels)));
    for (s, _) in e.cells.iter().map(|c| (&c.strategy, c.labels)).chain(stat_cells.clone()) {
        if !strategies.contains(s) {
            strategies.push(s.clone());
        }
    }
    let mut labels: Vec<usize> = e.cells.iter().map(|c| c.labels).chain(stat_cells.map(|c| c.1)).collect();
    labels.sort_unstable();
    labels.dedup();
    let stats: Vec<Vec<Option<Stat>>> = strategies
        .iter()
        .map(|s| {
            labels
                .iter()
                .map(|&l| {
                    if let Some(st) = &e.stats {
                        return st.cells.iter().find(|c| &c.strategy == s && c.labels == l).map(|c| Stat {
                            mean: c.win_rate.mean,
                            se: None,
                            n: c.seeds,
                            ci: Some((c.win_rate.lo, c.win_rate.hi)),
                        });
                    }
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
                    Some(Stat { mean, se, n: xs.len(), ci: None })
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
///
/// With [`ExperimentStats`] the cells are "67.0 [65.1, 69.0]" (mean and bootstrap interval), followed by the
/// difference to the baseline in percentage points, the label savings, and a footnote on how the intervals were
/// made (across prompts only with fewer than two seeds).
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
    let mut out = md_table(&rows);
    if let Some(st) = &e.stats {
        stats_text(&mut out, st, &t);
    }
    out
}

/// A Markdown table padded to line up: names left, numbers right.
fn md_table(rows: &[Vec<String>]) -> String {
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

/// How the intervals were made, in one sentence.
fn design(st: &ExperimentStats) -> String {
    let level = st.level * 100.0;
    if st.prompts_only {
        format!(
            "Intervals: {level:.0}% percentile bootstrap ({} replicates) across prompts only — fewer than 2 seeds, \
             so seed-to-seed variation is not in them.",
            st.replicates
        )
    } else {
        format!(
            "Intervals: {level:.0}% percentile bootstrap ({} replicates) resampling seeds ({}) and prompts as a \
             crossed design; differences are paired on the prompts both strategies evaluated.",
            st.replicates, st.seeds
        )
    }
}

/// A difference in percentage points with its interval, "+5.0 [+2.1, +7.9]" ("*" when unpaired).
fn diff_text(d: &crate::Difference) -> String {
    format!("{:+.1} [{:+.1}, {:+.1}]{}", d.mean * 100.0, d.lo * 100.0, d.hi * 100.0, if d.paired { "" } else { "*" })
}

/// Labels needed and the savings share: ("30.0", "75% [60%, 90%]") or ("> 40", "censored").
fn savings_text(s: &Savings) -> (String, String) {
    let pct = |x: Option<f64>| x.map_or("never".to_string(), |x| format!("{:.0}%", x * 100.0));
    match (s.labels_needed, s.share) {
        (Some(n), Some(sh)) => {
            (format!("{n:.1}"), format!("{:.0}% [{}, {}]", sh * 100.0, pct(s.share_lo), pct(s.share_hi)))
        }
        _ => (
            format!("> {}", s.max_labels),
            format!("censored (> {:.0}%)", s.max_labels as f64 / s.baseline_labels as f64 * 100.0),
        ),
    }
}

fn stats_text(out: &mut String, st: &ExperimentStats, t: &Table) {
    if let Some(base) = &st.baseline {
        let others: Vec<&String> = t.strategies.iter().filter(|s| *s != base).collect();
        if !others.is_empty() {
            out.push_str(&format!("\nDifference to {base} (percentage points, [interval]):\n\n"));
            let mut rows = vec![std::iter::once("strategy / labels".to_string())
                .chain(t.labels.iter().map(|l| l.to_string()))
                .collect::<Vec<_>>()];
            let mut unpaired = false;
            for s in &others {
                let mut row = vec![(*s).clone()];
                for &l in &t.labels {
                    let d = st.cells.iter().find(|c| &c.strategy == *s && c.labels == l).and_then(|c| c.diff.as_ref());
                    unpaired |= d.is_some_and(|d| !d.paired);
                    row.push(d.map_or("—".to_string(), diff_text));
                }
                rows.push(row);
            }
            out.push_str(&md_table(&rows));
            if unpaired {
                out.push_str("\n\\* unpaired: the runs evaluated different prompts, so the means were resampled independently.\n");
            }
        }
        if let Some(s0) = st.savings.first() {
            out.push_str(&format!(
                "\nLabels to reach {base}'s final win rate ({:.1}% at {} labels):\n\n",
                s0.target * 100.0,
                s0.baseline_labels
            ));
            let mut rows =
                vec![vec!["strategy".to_string(), "labels needed".into(), format!("share of {base}'s [interval]")]];
            for s in &st.savings {
                let (n, sh) = savings_text(s);
                rows.push(vec![s.strategy.clone(), n, sh]);
            }
            out.push_str(&md_table(&rows));
        }
    }
    out.push('\n');
    out.push_str(&design(st));
    out.push('\n');
    for n in &st.notes {
        out.push_str(&format!("Note: {n}\n"));
    }
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
        match &e.stats {
            Some(st) => w!(
                b,
                "<p class=\"caption\">Win rate % vs the baseline, mean [{:.0}% interval] ({}); best of each column \
                 in bold. {}</p>\n",
                st.level * 100.0,
                seeds,
                escape_html(&design(st))
            ),
            None => w!(
                b,
                "<p class=\"caption\">Win rate % vs the baseline, mean ± standard error across seeds ({}); best of \
                 each column in bold.</p>\n",
                seeds
            ),
        }
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
                        let se = match st.ci {
                            Some((lo, hi)) => {
                                Some(format!(" <span class=\"se\">[{:.1}, {:.1}]</span>", lo * 100.0, hi * 100.0))
                            }
                            None => st.se.map(|se| format!(" <span class=\"se\">± {:.1}</span>", se * 100.0)),
                        };
                        let n =
                            if ns.len() > 1 { format!(" <span class=\"se\">n={}</span>", st.n) } else { String::new() };
                        w!(b, "<td>{mean}{}{n}</td>", se.unwrap_or_default());
                    }
                }
            }
            b.push_str("</tr>\n");
        }
        b.push_str("</tbody>\n</table></div>\n</section>\n");
        if let Some(st) = &e.stats {
            stats_html(&mut b, st, &t);
        }
        plot_section(&mut b, &t, e.stats.is_some());
    }
    html::notes(&mut b, &e.notes);
    html::page(title, &b)
}

/// The difference and savings sections of the HTML page.
fn stats_html(b: &mut String, st: &ExperimentStats, t: &Table) {
    let Some(base) = &st.baseline else {
        for n in &st.notes {
            w!(b, "<p class=\"caption\">{}</p>\n", escape_html(n));
        }
        return;
    };
    let others: Vec<&String> = t.strategies.iter().filter(|s| *s != base).collect();
    if !others.is_empty() {
        w!(b, "<section id=\"difference\">\n<h2>Difference to {}</h2>\n", escape_html(base));
        w!(
            b,
            "<p class=\"caption\">Win rate minus {}'s at the same label count, percentage points [{:.0}% \
             interval]; * unpaired (the runs evaluated different prompts).</p>\n",
            escape_html(base),
            st.level * 100.0
        );
        b.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>strategy / labels</th>");
        for l in &t.labels {
            w!(b, "<th>{l}</th>");
        }
        b.push_str("</tr></thead>\n<tbody>\n");
        for s in &others {
            w!(b, "<tr><td>{}</td>", escape_html(s));
            for &l in &t.labels {
                match st.cells.iter().find(|c| &c.strategy == *s && c.labels == l).and_then(|c| c.diff.as_ref()) {
                    Some(d) => w!(b, "<td>{}</td>", escape_html(&diff_text(d))),
                    None => b.push_str("<td class=\"na\">—</td>"),
                }
            }
            b.push_str("</tr>\n");
        }
        b.push_str("</tbody>\n</table></div>\n</section>\n");
    }
    if let Some(s0) = st.savings.first() {
        b.push_str("<section id=\"savings\">\n<h2>Label savings</h2>\n");
        w!(
            b,
            "<p class=\"caption\">Labels each strategy needs to reach {}'s final win rate ({:.1}% at {} labels), \
             interpolated on its curve, as a share of {}'s [{:.0}% interval]; censored (&gt; N) when it never \
             reaches it.</p>\n",
            escape_html(base),
            s0.target * 100.0,
            s0.baseline_labels,
            escape_html(base),
            st.level * 100.0
        );
        w!(
            b,
            "<div class=\"scroll\"><table>\n<thead><tr><th>strategy</th><th>labels needed</th><th>share of {}'s</th>\
             </tr></thead>\n<tbody>\n",
            escape_html(base)
        );
        for s in &st.savings {
            let (n, sh) = savings_text(s);
            w!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape_html(&s.strategy),
                escape_html(&n),
                escape_html(&sh)
            );
        }
        b.push_str("</tbody>\n</table></div>\n</section>\n");
    }
    for n in &st.notes {
        w!(b, "<p class=\"caption\">{}</p>\n", escape_html(n));
    }
}

fn plot_section(b: &mut String, t: &Table, intervals: bool) {
    b.push_str("<section id=\"plot\">\n<h2>Win rate vs labels</h2>\n");
    w!(
        b,
        "<p class=\"caption\">Mean across seeds with {}; strategies are nudged sideways so their error bars do not \
         hide each other.</p>\n",
        if intervals { "its bootstrap interval" } else { "± 1 standard error" }
    );
    if t.stats.iter().flatten().all(Option::is_none) {
        b.push_str("<p class=\"empty\">No finite results to plot.</p>\n</section>\n");
        return;
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for st in t.stats.iter().flatten().flatten() {
        let (l, h) = st.bar().unwrap_or((st.mean, st.mean));
        lo = lo.min(l.min(st.mean));
        hi = hi.max(h.max(st.mean));
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
            if let Some((l, h)) = st.bar() {
                f.error_bar(&mut s, *x, dx, l.max(f.y.lo), h.min(f.y.hi), &colour, 8.0);
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
