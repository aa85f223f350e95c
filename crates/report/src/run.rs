//! The report of one active-learning run: headline numbers, win rate vs labels, what each acquisition step picked,
//! DPO training curves, and tables of rounds and evaluation samples.

use crate::html::{self, duration, escape_html, finite, legend_item, num, pct};
use crate::svg::{self, Axis, Fmt, Frame, Mark};
use crate::{AcquisitionRound, RoundSummary, RunReport, SampleRow, TrainPoint, TrainingCurve};

/// Bins of the p̂ histogram over 0..1 (0.05 wide, as in the paper's figures).
const P_BINS: usize = 20;
/// Bins of the acquisition-score histogram over the observed score range.
const SCORE_BINS: usize = 20;

/// Renders a run report as one self-contained HTML page.
///
/// SVG figures, in page order: one win-rate-vs-labels plot (when at least one round has a finite win rate), one
/// figure per acquisition round that recorded candidates (p̂ of the selected pairs mirrored by oracle agreement,
/// beside the score histogram of all candidates), and four training plots (loss, reward margin, reward accuracy,
/// chosen/rejected rewards) when any training step was logged. Missing parts become short "not yet" notes.
pub fn render_run(r: &RunReport) -> String {
    let title = if r.title.trim().is_empty() { "activepref run" } else { r.title.as_str() };
    let mut b = String::new();
    html::header(&mut b, title, &r.subtitle);
    tiles(&mut b, &r.rounds);
    win_rate_section(&mut b, &r.rounds);
    rounds_table(&mut b, &r.rounds);
    acquisition_section(&mut b, &r.acquisitions);
    training_section(&mut b, &r.training);
    samples_section(&mut b, &r.samples);
    html::notes(&mut b, &r.notes);
    if !r.config_toml.trim().is_empty() {
        b.push_str("<section id=\"config\">\n<details>\n<summary>Configuration</summary>\n");
        w!(b, "<pre>{}</pre>\n</details>\n</section>\n", escape_html(&r.config_toml));
    }
    html::page(title, &b)
}

/// Headline tiles: the latest win rate and agreement, labels used, rounds, total time.
fn tiles(b: &mut String, rounds: &[RoundSummary]) {
    if rounds.is_empty() {
        return;
    }
    b.push_str("<div class=\"tiles\">\n");
    let tile = |b: &mut String, k: &str, v: &str, d: &str| {
        w!(b, "<div class=\"tile\"><div class=\"k\">{k}</div><div class=\"v\">{}</div>", escape_html(v));
        if !d.is_empty() {
            w!(b, "<div class=\"d\">{}</div>", escape_html(d));
        }
        b.push_str("</div>\n");
    };
    if let Some(last) = rounds.iter().rev().find(|r| finite(r.win_rate).is_some()) {
        let se = finite(last.win_rate_se).map(|s| format!("± {:.1} s.e. · ", s * 100.0)).unwrap_or_default();
        tile(b, "latest win rate", &pct(last.win_rate), &format!("{se}round {}, {} labels", last.round, last.labels));
    } else {
        tile(b, "latest win rate", "—", "no evaluation yet");
    }
    let labels = rounds.iter().map(|r| r.labels).max().unwrap_or(0);
    tile(b, "labels", &labels.to_string(), "preference labels acquired");
    tile(b, "rounds", &rounds.len().to_string(), "");
    if let Some(last) = rounds.iter().rev().find(|r| finite(r.oracle_agreement).is_some()) {
        tile(b, "oracle agreement", &pct(last.oracle_agreement), &format!("round {}", last.round));
    }
    let secs: Vec<f64> = rounds.iter().filter_map(|r| finite(r.seconds)).collect();
    if !secs.is_empty() {
        tile(b, "wall time", &duration(Some(secs.iter().sum())), "all rounds");
    }
    b.push_str("</div>\n");
}

fn win_rate_section(b: &mut String, rounds: &[RoundSummary]) {
    b.push_str("<section id=\"win-rate\">\n<h2>Win rate vs labels</h2>\n");
    b.push_str(
        "<p class=\"caption\">Share of held-out prompts on which the judge preferred the trained policy's completion \
         to the baseline's. Error bars: ± 1 standard error. Dashed line: parity (50%).</p>\n",
    );
    let mut pts: Vec<(f64, f64, Option<f64>)> = rounds
        .iter()
        .filter_map(|r| {
            let w = finite(r.win_rate)?;
            Some((r.labels as f64, w, finite(r.win_rate_se).filter(|s| *s >= 0.0)))
        })
        .collect();
    if pts.is_empty() {
        b.push_str("<p class=\"empty\">No evaluation yet.</p>\n</section>\n");
        return;
    }
    // Rounds normally arrive in label order already; sorting keeps the line honest if they do not.
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_x = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    xs.dedup();
    // A few label budgets: tick exactly at them, so each point reads off the axis; many: round-number ticks.
    let x = if xs.len() <= 10 {
        Axis::fixed(0.0_f64.min(xs[0]), max_x * 1.03, &xs, Fmt::Plain)
    } else {
        Axis::loose(0.0, max_x, 9, Fmt::Plain)
    };
    let f = Frame {
        left: 70.0,
        top: 16.0,
        width: 860.0,
        height: 290.0,
        x,
        y: Axis::fixed(0.0, 1.0, &(0..=10).map(|i| i as f64 / 10.0).collect::<Vec<_>>(), Fmt::Percent),
        fs: 13.0,
    };
    let mut s = String::new();
    svg::open(&mut s, 960.0, 358.0, f.fs, "Win rate vs labels");
    f.draw_axes(&mut s, "labels acquired (cumulative)", "win rate vs baseline");
    f.hline(&mut s, 0.5, "#8a94a0", true);
    svg::text(
        &mut s,
        f.right() - 4.0,
        f.py(0.5) - 6.0,
        "end",
        &format!("fill=\"{}\" font-size=\"11\"", svg::MUTED),
        "parity",
    );
    let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1.clamp(0.0, 1.0))).collect();
    f.polyline(&mut s, &line, svg::ACCENT, 2.0, false);
    for &(x, y, se) in &pts {
        if let Some(se) = se {
            f.error_bar(&mut s, x, 0.0, (y - se).max(0.0), (y + se).min(1.0), svg::ACCENT, 10.0);
        }
    }
    // Label every point while they fit; with many rounds label a regular subset and always the last one.
    let stride = pts.len().div_ceil(24);
    for (i, &(x, y, se)) in pts.iter().enumerate() {
        let yc = y.clamp(0.0, 1.0);
        f.dot(&mut s, x, 0.0, yc, 5.0, svg::ACCENT);
        if i % stride != 0 && i + 1 != pts.len() {
            continue;
        }
        let se = se.unwrap_or(0.0);
        let above = f.py((y + se).min(1.0)) - 9.0;
        let ty = if above < f.top + 10.0 { f.py((y - se).max(0.0)) + 19.0 } else { above };
        let label = format!("{:.1}%", y * 100.0);
        // Keep edge labels inside the plot, clear of the y tick labels.
        let (px, half) = (f.px(x), label.chars().count() as f64 * 3.6);
        let (lx, anchor) = if px - half < f.left {
            (px - 6.0, "start")
        } else if px + half > f.right() {
            (px + 6.0, "end")
        } else {
            (px, "middle")
        };
        svg::text(
            &mut s,
            lx,
            ty,
            anchor,
            &format!("fill=\"{}\" font-size=\"12\" font-weight=\"600\"", svg::INK),
            &label,
        );
    }
    svg::close(&mut s);
    // Wide plots keep a readable minimum width on phones and scroll sideways instead of shrinking.
    w!(b, "<div class=\"wide\">{s}</div>\n");
    b.push_str("</section>\n");
}

fn rounds_table(b: &mut String, rounds: &[RoundSummary]) {
    b.push_str("<section id=\"rounds\">\n<h2>Rounds</h2>\n");
    if rounds.is_empty() {
        b.push_str("<p class=\"empty\">No rounds yet.</p>\n</section>\n");
        return;
    }
    b.push_str(
        "<p class=\"caption\">Win rate ± standard error over the evaluation prompts that got a verdict; \
         <em>dropped</em> prompts had none. Agreement: how often the oracle preferred the completion the model \
         itself favoured.</p>\n",
    );
    b.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>round</th><th>labels</th><th>win rate</th><th>eval prompts</th><th>dropped</th><th>oracle agreement</th><th>train loss</th><th>time</th></tr></thead>\n<tbody>\n");
    for r in rounds {
        let win = match (finite(r.win_rate), finite(r.win_rate_se)) {
            (Some(w), Some(se)) => format!("{:.1}% <span class=\"se\">± {:.1}</span>", w * 100.0, se * 100.0),
            (Some(w), None) => format!("{:.1}%", w * 100.0),
            _ => "<span class=\"se\">—</span>".to_string(),
        };
        w!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.round,
            r.labels,
            win,
            r.eval_prompts,
            r.dropped,
            pct(r.oracle_agreement),
            num(r.train_loss, 4),
            duration(r.seconds)
        );
    }
    b.push_str("</tbody>\n</table></div>\n</section>\n");
}

fn acquisition_section(b: &mut String, acqs: &[AcquisitionRound]) {
    b.push_str("<section id=\"acquisition\">\n<h2>Acquisition</h2>\n");
    if acqs.is_empty() {
        b.push_str("<p class=\"empty\">No acquisition recorded yet.</p>\n</section>\n");
        return;
    }
    b.push_str(
        "<p class=\"caption\">Left: the model's predicted preference p̂ = P(completion 0 preferred) of the pairs sent \
         to the oracle, in 0.05 bins; pairs the oracle labelled as the model predicted stack upwards, pairs it labelled \
         the other way hang downwards — mass near 0 or 1 above the axis is <em>confidently right</em>, below it \
         <em>confidently wrong</em>. Right: acquisition scores of all candidates, the selected ones highlighted.</p>\n",
    );
    b.push_str("<div class=\"legend\">");
    legend_item(b, svg::AGREE, "oracle agrees with the model", false);
    legend_item(b, svg::DISAGREE, "oracle disagrees", false);
    legend_item(b, svg::UNLABELLED, "selected, no label", false);
    legend_item(b, svg::SELECTED, "selected candidates", false);
    legend_item(b, svg::CANDIDATE, "other candidates", false);
    b.push_str("</div>\n<div class=\"grid\">\n");
    for a in acqs {
        acquisition_card(b, a);
    }
    b.push_str("</div>\n</section>\n");
}

fn acquisition_card(b: &mut String, a: &AcquisitionRound) {
    let selected: Vec<_> = a.points.iter().filter(|p| p.selected).collect();
    let labelled = selected.iter().filter(|p| p.oracle_agrees.is_some()).count();
    let agree = selected.iter().filter(|p| p.oracle_agrees == Some(true)).count();
    let strategy = if a.strategy.trim().is_empty() { String::new() } else { format!(" · {}", a.strategy) };
    w!(b, "<div class=\"card\"><h3>Round {}{}</h3>\n", a.round, escape_html(&strategy));
    let mut caption = format!("{} of {} candidates selected", selected.len(), a.points.len());
    if labelled > 0 {
        caption.push_str(&format!(
            " · oracle agreed on {agree} of {labelled} ({:.0}%)",
            agree as f64 * 100.0 / labelled as f64
        ));
    }
    w!(b, "<p class=\"caption\">{}</p>\n", escape_html(&caption));
    if a.points.is_empty() {
        b.push_str("<p class=\"empty\">No candidates recorded.</p></div>\n");
        return;
    }

    let mut s = String::new();
    svg::open(&mut s, 480.0, 232.0, 11.0, &format!("Acquisition, round {}", a.round));

    // Left panel: p̂ of the selected pairs, mirrored by oracle agreement.
    let (mut up_agree, mut up_none, mut down) = ([0usize; P_BINS], [0usize; P_BINS], [0usize; P_BINS]);
    for p in &selected {
        if !(p.p_hat.is_finite() && (0.0..=1.0).contains(&p.p_hat)) {
            continue;
        }
        let bin = ((p.p_hat * P_BINS as f64) as usize).min(P_BINS - 1);
        match p.oracle_agrees {
            Some(true) => up_agree[bin] += 1,
            Some(false) => down[bin] += 1,
            None => up_none[bin] += 1,
        }
    }
    let up_max = (0..P_BINS).map(|i| up_agree[i] + up_none[i]).max().unwrap_or(0);
    let top = up_max.max(*down.iter().max().unwrap_or(&0)).max(1) as f64;
    let pos = svg::count_ticks(top, 3);
    let t = pos.last().copied().unwrap_or(1.0);
    let mut yt: Vec<f64> = pos.iter().rev().filter(|v| **v > 0.0).map(|v| -v).collect();
    yt.extend(pos.iter().copied().filter(|v| *v >= 0.0));
    let f = Frame {
        left: 48.0,
        top: 24.0,
        width: 252.0,
        height: 164.0,
        x: Axis::fixed(0.0, 1.0, &[0.0, 0.25, 0.5, 0.75, 1.0], Fmt::Plain),
        y: Axis::fixed(-t, t, &yt, Fmt::Abs),
        fs: 11.0,
    };
    svg::text(
        &mut s,
        f.left - 40.0,
        13.0,
        "start",
        &format!("font-weight=\"600\" fill=\"{}\"", svg::INK),
        "p̂ of selected pairs",
    );
    f.draw_axes(&mut s, "p̂ = P(completion 0 preferred)", "");
    // Colour-coded y title: rotated by -90°, text runs bottom to top, so "disagree" sits by the lower half.
    w!(
        s,
        "<text transform=\"translate({:.1} {:.1}) rotate(-90)\" text-anchor=\"middle\"><tspan fill=\"{}\">disagree</tspan><tspan fill=\"{}\"> · </tspan><tspan fill=\"{}\">agree</tspan></text>",
        f.left - 30.0,
        f.py(0.0),
        svg::DISAGREE,
        svg::MUTED,
        svg::AGREE
    );
    let wbin = 1.0 / P_BINS as f64;
    for i in 0..P_BINS {
        let (x0, x1) = (i as f64 * wbin, (i + 1) as f64 * wbin);
        if up_agree[i] > 0 {
            f.bar(&mut s, x0, x1, 0.0, up_agree[i] as f64, svg::AGREE, 1.5, 1.5);
        }
        if up_none[i] > 0 {
            let base = up_agree[i] as f64;
            f.bar(&mut s, x0, x1, base, base + up_none[i] as f64, svg::UNLABELLED, 1.5, 1.5);
        }
        if down[i] > 0 {
            f.bar(&mut s, x0, x1, 0.0, -(down[i] as f64), svg::DISAGREE, 1.5, 1.5);
        }
    }
    f.hline(&mut s, 0.0, "#4b5563", false);
    f.vline(&mut s, 0.5, "#8a94a0", true);
    if selected.is_empty() {
        svg::text(&mut s, f.px(0.5), f.py(t * 0.5), "middle", &format!("fill=\"{}\"", svg::MUTED), "nothing selected");
    }

    // Right panel: acquisition scores of all candidates, selected ones stacked at the bottom in orange.
    let scores: Vec<(f64, bool)> =
        a.points.iter().filter(|p| p.score.is_finite()).map(|p| (p.score, p.selected)).collect();
    let g_left = 350.0;
    if scores.is_empty() {
        svg::text(&mut s, g_left + 60.0, 110.0, "middle", &format!("fill=\"{}\"", svg::MUTED), "no finite scores");
    } else {
        let lo = scores.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = scores.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
        let (mut sel, mut other) = ([0usize; SCORE_BINS], [0usize; SCORE_BINS]);
        for &(v, is_sel) in &scores {
            let bin = (((v - lo) / (hi - lo) * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1);
            if is_sel {
                sel[bin] += 1;
            } else {
                other[bin] += 1;
            }
        }
        let max = (0..SCORE_BINS).map(|i| sel[i] + other[i]).max().unwrap_or(1) as f64;
        let yt = svg::count_ticks(max, 4);
        let ymax = yt.last().copied().unwrap_or(1.0);
        let g = Frame {
            left: g_left,
            top: 24.0,
            width: 118.0,
            height: 164.0,
            x: Axis::tight(lo, hi, 4, Fmt::Plain),
            y: Axis::fixed(0.0, ymax, &yt, Fmt::Plain),
            fs: 11.0,
        };
        svg::text(
            &mut s,
            g.left - 26.0,
            13.0,
            "start",
            &format!("font-weight=\"600\" fill=\"{}\"", svg::INK),
            "acquisition score",
        );
        g.draw_axes(&mut s, "score", "");
        let wb = (hi - lo) / SCORE_BINS as f64;
        for i in 0..SCORE_BINS {
            let (x0, x1) = (lo + i as f64 * wb, lo + (i + 1) as f64 * wb);
            if sel[i] > 0 {
                g.bar(&mut s, x0, x1, 0.0, sel[i] as f64, svg::SELECTED, 1.0, 1.5);
            }
            if other[i] > 0 {
                let base = sel[i] as f64;
                g.bar(&mut s, x0, x1, base, base + other[i] as f64, svg::CANDIDATE, 1.0, 1.5);
            }
        }
    }
    svg::close(&mut s);
    b.push_str(&s);
    b.push_str("</div>\n");
}

/// Reads one metric off a logged training step.
type Getter = fn(&TrainPoint) -> f64;

/// One training panel: which metrics it draws and how its y axis behaves.
struct Panel {
    title: &'static str,
    y_title: &'static str,
    /// The metrics drawn for every round, each solid (`false`) or dashed (`true`).
    series: &'static [(Getter, bool)],
    /// Fixed 0..1 axis (accuracy) rather than fitted to the data.
    unit: bool,
    /// Keep 0 on the axis: margins and rewards start at 0 and their sign matters.
    zero: bool,
}

const PANELS: [Panel; 4] = [
    Panel { title: "Loss", y_title: "loss", series: &[(|p| p.loss, false)], unit: false, zero: false },
    Panel {
        title: "Reward margin (chosen − rejected)",
        y_title: "margin",
        series: &[(|p| p.margin, false)],
        unit: false,
        zero: true,
    },
    Panel {
        title: "Reward accuracy",
        y_title: "accuracy",
        series: &[(|p| p.accuracy, false)],
        unit: true,
        zero: false,
    },
    Panel {
        title: "Rewards: chosen and rejected",
        y_title: "reward",
        series: &[(|p| p.chosen, false), (|p| p.rejected, true)],
        unit: false,
        zero: true,
    },
];

fn training_section(b: &mut String, curves: &[TrainingCurve]) {
    b.push_str("<section id=\"training\">\n<h2>Training</h2>\n");
    let curves: Vec<&TrainingCurve> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    if curves.is_empty() {
        b.push_str("<p class=\"empty\">No training steps logged yet.</p>\n</section>\n");
        return;
    }
    b.push_str(
        "<p class=\"caption\">DPO metrics per logged step, one line per round (TRL's names: loss, rewards/margins, \
         rewards/accuracies, rewards/chosen and rewards/rejected; rewards are β·log π/π<sub>ref</sub>).</p>\n",
    );
    let colours: Vec<String> = (0..curves.len()).map(|i| svg::series_colour(i, curves.len())).collect();
    b.push_str("<div class=\"legend\">");
    for (c, colour) in curves.iter().zip(&colours) {
        legend_item(b, colour, &format!("round {}", c.round), true);
    }
    b.push_str("</div>\n<div class=\"grid\">\n");
    for panel in &PANELS {
        b.push_str(&line_panel(panel, &curves, &colours));
    }
    b.push_str("</div>\n</section>\n");
}

/// A line through the finite values of one metric of one round.
struct Line<'a> {
    pts: Vec<(f64, f64)>,
    colour: &'a str,
    dashed: bool,
}

/// One training panel: for every curve, one line per series of the panel.
fn line_panel(panel: &Panel, curves: &[&TrainingCurve], colours: &[String]) -> String {
    let Panel { title, y_title, series, unit, zero } = *panel;
    let mut lines: Vec<Line> = Vec::new();
    for (c, colour) in curves.iter().zip(colours) {
        for &(get, dashed) in series {
            let pts = c.points.iter().map(|p| (p.step as f64, get(p))).filter(|(_, y)| y.is_finite()).collect();
            lines.push(Line { pts, colour: colour.as_str(), dashed });
        }
    }
    let all = || lines.iter().flat_map(|l| l.pts.iter());
    let mut s = String::new();
    s.push_str("<div class=\"card\">");
    svg::open(&mut s, 480.0, 262.0, 11.0, title);
    svg::text(&mut s, 8.0, 15.0, "start", &format!("font-weight=\"600\" fill=\"{}\"", svg::INK), title);
    if all().next().is_none() {
        svg::text(&mut s, 240.0, 140.0, "middle", &format!("fill=\"{}\"", svg::MUTED), "no finite values");
        svg::close(&mut s);
        s.push_str("</div>\n");
        return s;
    }
    let (x_lo, x_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y_lo, mut y_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if zero {
        y_lo = y_lo.min(0.0);
        y_hi = y_hi.max(0.0);
    }
    let y = if unit {
        Axis::fixed(0.0, 1.0, &[0.0, 0.25, 0.5, 0.75, 1.0], Fmt::Plain)
    } else {
        Axis::loose(y_lo, y_hi, 5, Fmt::Plain)
    };
    let f = Frame {
        left: 58.0,
        top: 28.0,
        width: 404.0,
        height: 190.0,
        x: Axis::loose(x_lo, x_hi.max(x_lo + 1.0), 6, Fmt::Plain),
        y,
        fs: 11.0,
    };
    f.draw_axes(&mut s, "step", y_title);
    if zero {
        f.hline(&mut s, 0.0, "#9aa3ae", false);
    }
    for l in &lines {
        f.polyline(&mut s, &l.pts, l.colour, 1.7, l.dashed);
    }
    if series.len() > 1 {
        let entries = [
            ("chosen".to_string(), svg::MUTED.to_string(), Mark::Line),
            ("rejected".to_string(), svg::MUTED.to_string(), Mark::Dashed),
        ];
        svg::legend(&mut s, f.right() - 200.0, 12.0, 11.0, &entries[..1]);
        svg::legend(&mut s, f.right() - 100.0, 12.0, 11.0, &entries[1..]);
    }
    svg::close(&mut s);
    s.push_str("</div>\n");
    s
}

fn samples_section(b: &mut String, samples: &[SampleRow]) {
    b.push_str("<section id=\"samples\">\n<h2>Evaluation samples</h2>\n");
    if samples.is_empty() {
        b.push_str("<p class=\"empty\">No samples yet.</p>\n</section>\n");
        return;
    }
    b.push_str(
        "<p class=\"caption\">The judge's verdict on a few held-out prompts; the winning completion is shaded.</p>\n",
    );
    b.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>#</th><th style=\"text-align:left\">prompt</th><th style=\"text-align:left\">policy</th><th style=\"text-align:left\">baseline</th><th style=\"text-align:left\">winner</th></tr></thead>\n<tbody>\n");
    for (i, row) in samples.iter().enumerate() {
        let winner = row.winner.trim().to_ascii_lowercase();
        let class = |side: &str| if winner == side { "text win" } else { "text" };
        w!(
            b,
            "<tr><td>{}</td><td class=\"text\">{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td class=\"text\">{}</td></tr>\n",
            i + 1,
            escape_html(&row.prompt),
            class("policy"),
            escape_html(&row.policy),
            class("baseline"),
            escape_html(&row.baseline),
            escape_html(&row.winner)
        );
    }
    b.push_str("</tbody>\n</table></div>\n</section>\n");
}
