// The dashboard: polls GET /api/stats every 2 s (read-only, no token) and redraws. Every value goes in
// with textContent or as an SVG attribute, never as HTML, so names and texts cannot inject markup.
'use strict';

const POLL_MS = 2000;
const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(x) {
  return x == null ? '–' : (100 * x).toFixed(1) + '%';
}

function cell(row, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function ago(ts, now) {
  if (!ts) return '–';
  const s = Math.max(0, now - parseFloat(ts));
  if (s < 60) return Math.round(s) + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return new Date(parseFloat(ts) * 1000).toLocaleDateString();
}

function drawChart(rounds) {
  const pts = rounds.filter((r) => r.win_rate != null).map((r) => ({ x: r.labels, y: r.win_rate, se: r.win_rate_se || 0, round: r.round }));
  const W = 560, H = 300, L = 48, R = 16, T = 14, B = 40;
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'win rate against labels' });
  const maxTarget = Math.max(0, ...rounds.map((r) => r.target || r.labels || 0));
  const xmax = Math.max(1, maxTarget, ...pts.map((p) => p.x)) * 1.05;
  const X = (x) => L + (x / xmax) * (W - L - R);
  const Y = (y) => T + (1 - y) * (H - T - B);
  for (let v = 0; v <= 1.0001; v += 0.25) {
    svg.appendChild(el('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: 'grid' }));
    svg.appendChild(el('text', { x: L - 8, y: Y(v) + 4, 'text-anchor': 'end' }, Math.round(v * 100) + '%'));
  }
  svg.appendChild(el('line', { x1: L, x2: W - R, y1: Y(0.5), y2: Y(0.5), class: 'ref' }));
  svg.appendChild(el('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }));
  svg.appendChild(el('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }));
  const step = niceStep(xmax / 6);
  for (let v = 0; v <= xmax; v += step) {
    svg.appendChild(el('line', { x1: X(v), x2: X(v), y1: H - B, y2: H - B + 4, class: 'axis' }));
    svg.appendChild(el('text', { x: X(v), y: H - B + 17, 'text-anchor': 'middle' }, String(v)));
  }
  svg.appendChild(el('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' }, 'labels'));
  if (pts.length === 0) {
    svg.appendChild(el('text', { x: (L + W - R) / 2, y: Y(0.5) - 12, 'text-anchor': 'middle', class: 'empty-note' }, 'No round evaluated yet'));
  } else {
    const d = pts.map((p, i) => (i ? 'L' : 'M') + X(p.x).toFixed(1) + ' ' + Y(p.y).toFixed(1)).join(' ');
    svg.appendChild(el('path', { d, class: 'line' }));
    for (const p of pts) {
      const lo = Math.max(0, p.y - p.se), hi = Math.min(1, p.y + p.se);
      svg.appendChild(el('line', { x1: X(p.x), x2: X(p.x), y1: Y(lo), y2: Y(hi), class: 'err' }));
      svg.appendChild(el('line', { x1: X(p.x) - 5, x2: X(p.x) + 5, y1: Y(lo), y2: Y(lo), class: 'err' }));
      svg.appendChild(el('line', { x1: X(p.x) - 5, x2: X(p.x) + 5, y1: Y(hi), y2: Y(hi), class: 'err' }));
      const c = el('circle', { cx: X(p.x), cy: Y(p.y), r: 5, class: 'pt' });
      c.appendChild(el('title', {}, `round ${p.round}: ${pct(p.y)} ± ${(100 * p.se).toFixed(1)} after ${p.x} labels`));
      svg.appendChild(c);
      svg.appendChild(el('text', { x: X(p.x), y: Y(hi) - 8, 'text-anchor': 'middle' }, pct(p.y)));
    }
  }
  $('chart').replaceChildren(svg);
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function render(s) {
  $('run').textContent = s.run;
  document.title = 'Dashboard · ' + s.run + ' · activepref';
  const p = s.progress;
  $('progress-text').textContent = p.message;
  $('bar-fill').style.width = (p.target ? Math.min(100, (100 * p.labelled) / p.target) : 0).toFixed(1) + '%';

  const total = s.rounds.reduce((m, r) => Math.max(m, r.labels), 0);
  const last = s.rounds[s.rounds.length - 1];
  $('s-labels').textContent = String(total);
  $('s-labels-sub').textContent = last && last.target ? `of ${last.target} over ${s.rounds.length} rounds` : '';
  const evald = s.rounds.filter((r) => r.win_rate != null);
  const lw = evald[evald.length - 1];
  $('s-win').textContent = lw ? pct(lw.win_rate) : '–';
  $('s-win-sub').textContent = lw ? `± ${(100 * lw.win_rate_se).toFixed(1)} · round ${lw.round}, ${lw.judged} prompts` : 'no round evaluated yet';
  const active = s.annotators.filter((a) => a.answers > 0).length;
  $('s-ann').textContent = String(s.annotators.length);
  $('s-ann-sub').textContent = `${active} with answers`;
  const ag = s.agreement;
  $('s-kappa').textContent = ag.kappa == null ? '–' : ag.kappa.toFixed(2);
  $('s-kappa-sub').textContent = ag.pairs
    ? `${ag.pairs} pairs answered twice · ${pct(ag.raw)} raw · Krippendorff's α ${ag.alpha == null ? '–' : ag.alpha.toFixed(2)}`
    : `no pair answered twice yet (overlap ${Math.round(100 * s.overlap)}%)`;

  drawChart(s.rounds);

  const rows = [];
  for (const r of s.rounds) {
    const tr = document.createElement('tr');
    cell(tr, String(r.round));
    cell(tr, String(r.labels), 'num');
    cell(tr, r.target == null ? '–' : String(r.target), 'num');
    cell(tr, String(r.dropped), 'num');
    cell(tr, String(r.pending), 'num');
    cell(tr, r.win_rate == null ? '–' : `${pct(r.win_rate)} ± ${(100 * r.win_rate_se).toFixed(1)}`, 'num');
    const st = document.createElement('span');
    st.className = 'pill ' + r.state.replace(' ', '-');
    st.textContent = r.state;
    cell(tr, '').appendChild(st);
    rows.push(tr);
  }
  $('rounds').replaceChildren(...rows);

  const arows = [];
  for (const a of s.annotators) {
    const tr = document.createElement('tr');
    cell(tr, a.name);
    cell(tr, String(a.answers), 'num');
    cell(tr, String(a.labels), 'num');
    cell(tr, String(a.ties), 'num');
    cell(tr, String(a.skips), 'num');
    cell(tr, a.median_seconds == null ? '–' : a.median_seconds.toFixed(1), 'num');
    cell(tr, ago(a.last_answer_at, s.now));
    arows.push(tr);
  }
  if (arows.length === 0) {
    const tr = document.createElement('tr');
    const td = cell(tr, 'No annotators yet: activepref annotators add NAME --run DIR');
    td.colSpan = 7;
    arows.push(tr);
  }
  $('annotators').replaceChildren(...arows);
}

async function poll() {
  try {
    const r = await fetch('/api/stats', { cache: 'no-store' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    render(await r.json());
    $('live').classList.remove('stale');
    $('updated').textContent = 'live · updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    $('live').classList.add('stale');
    $('updated').textContent = 'server unreachable (' + e.message + '), retrying';
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
