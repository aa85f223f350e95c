// The labeling page: keyboard first (1 = A, 2 = B, t = tie, s = skip, u = undo), one pair at a time.
// "Saved" appears only after the server answered 2xx, which it does only once the label is committed to
// the run store. The page never un-swaps A/B itself: it sends what it showed, the server maps it back.
'use strict';

const TOKEN_KEY = 'activepref.annotatorToken';
const POLL_MS = 3000; // how often to look for new pairs when there is nothing to label

const $ = (id) => document.getElementById(id);
let token = localStorage.getItem(TOKEN_KEY) || '';
let current = null; // the query on screen
let busy = false; // a request is in flight: keys are ignored, so one key press is one label
let saved = 0; // labels saved in this page's lifetime (the test waits on data-saved)
let pollTimer = null;

class AuthError extends Error {}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = {};
  try {
    data = await r.json();
  } catch (_) {
    data = { error: 'the server answered ' + r.status + ' without a JSON body' };
  }
  if (r.status === 401) {
    signOut(data.error || 'unknown token');
    throw new AuthError(data.error);
  }
  return { ok: r.ok, status: r.status, data };
}

function setStatus(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
}

function show(section) {
  for (const id of ['signin', 'work', 'empty']) $(id).hidden = id !== section;
}

function signOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  token = '';
  current = null;
  clearTimeout(pollTimer);
  $('who').hidden = true;
  $('signout').hidden = true;
  $('progress').hidden = true;
  setStatus('', '');
  $('signin-error').textContent = reason || '';
  show('signin');
  $('token').value = '';
  $('token').focus();
}

function renderProgress(p) {
  if (!p) return;
  $('progress').hidden = false;
  const rounds = p.rounds ? ' of ' + p.rounds : '';
  let text;
  if (p.target) {
    text = `Round ${p.round}${rounds} · ${p.labelled} / ${p.target} labels · ${p.pending} waiting`;
  } else {
    text = `Round ${p.round}${rounds} · ${p.labelled} labels · ${p.pending} waiting`;
  }
  if (p.state === 'training') text = `Round ${p.round}${rounds} · all ${p.labelled} labels in · training`;
  if (p.state === 'finished') text = `Finished · ${p.labelled} labels`;
  $('progress-text').textContent = text;
  const frac = p.target ? Math.min(1, p.labelled / p.target) : 0;
  $('bar-fill').style.width = (100 * frac).toFixed(1) + '%';
}

function render(data) {
  renderProgress(data.progress);
  $('who').textContent = data.annotator;
  $('who').hidden = false;
  $('signout').hidden = false;
  const q = data.query;
  clearTimeout(pollTimer);
  for (const c of ['card-a', 'card-b']) $(c).classList.remove('chosen');
  if (!q) {
    current = null;
    $('empty-text').textContent = data.message || '';
    show('empty');
    pollTimer = setTimeout(() => loadNext().catch(onError), POLL_MS);
    return;
  }
  current = q;
  $('prompt').textContent = q.prompt;
  $('text-a').textContent = q.a;
  $('text-b').textContent = q.b;
  $('qmeta').textContent = `· round ${q.round} · pair #${q.id}`;
  const badge = q.second_opinion ? 'second opinion' : q.skipped_before ? 'you skipped this before' : '';
  $('qbadge').textContent = badge;
  $('qbadge').hidden = !badge;
  document.body.dataset.queryId = String(q.id);
  show('work');
}

async function loadNext() {
  const r = await api('GET', '/api/next');
  if (!r.ok) {
    setStatus('error', 'Could not load the next pair: ' + (r.data.error || r.status));
    return;
  }
  render(r.data);
}

function onError(e) {
  if (e instanceof AuthError) return;
  setStatus('error', 'Not saved: the server did not answer (' + e.message + '). Press the key again to retry.');
}

async function act(action) {
  if (busy || !token) return;
  if (['A', 'B', 'tie', 'skip'].includes(action) && !current) return;
  busy = true;
  for (const b of document.querySelectorAll('[data-action]')) b.disabled = true;
  try {
    if (action === 'A' || action === 'B' || action === 'tie') {
      const q = current;
      if (action !== 'tie') $(action === 'A' ? 'card-a' : 'card-b').classList.add('chosen');
      setStatus('saving', 'Saving…');
      const r = await api('POST', '/api/label', { query_id: q.id, choice: action });
      if (r.ok) {
        saved += 1;
        $('status').dataset.saved = String(saved);
        const what = action === 'tie' ? 'tie' : action + ' is better';
        setStatus('saved', `✓ Saved · pair #${q.id}: ${what}`);
        await loadNext();
      } else if (r.status === 409 || r.status === 404) {
        setStatus('info', 'Not saved: ' + r.data.error + '. Showing the next pair.');
        await loadNext();
      } else {
        for (const c of ['card-a', 'card-b']) $(c).classList.remove('chosen');
        setStatus('error', 'Not saved: ' + (r.data.error || 'error ' + r.status));
      }
    } else if (action === 'skip') {
      const q = current;
      const r = await api('POST', '/api/skip', { query_id: q.id });
      if (r.ok) {
        setStatus('info', `Skipped pair #${q.id}; it stays in the queue for others.`);
        await loadNext();
      } else {
        setStatus('error', 'Could not skip: ' + (r.data.error || r.status));
      }
    } else if (action === 'undo') {
      const r = await api('POST', '/api/undo', {});
      if (r.ok) {
        saved = Math.max(0, saved - 1);
        $('status').dataset.saved = String(saved);
        setStatus('info', `Undone: your label for pair #${r.data.undone} was removed. Label it again.`);
        await loadNext();
      } else {
        setStatus('error', 'Cannot undo: ' + (r.data.error || r.status));
      }
    }
  } catch (e) {
    onError(e);
  } finally {
    busy = false;
    for (const b of document.querySelectorAll('[data-action]')) b.disabled = false;
  }
}

const KEYS = { '1': 'A', '2': 'B', t: 'tie', s: 'skip', u: 'undo' };

document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
  const action = KEYS[e.key.toLowerCase()];
  if (!action || $('work').hidden && action !== 'undo') return;
  e.preventDefault();
  act(action);
});

for (const b of document.querySelectorAll('[data-action]')) {
  b.addEventListener('click', () => act(b.dataset.action));
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (!t) return;
  token = t;
  localStorage.setItem(TOKEN_KEY, t);
  $('signin-error').textContent = '';
  $('token').blur();
  loadNext().catch(onError);
});

$('signout').addEventListener('click', () => signOut(''));

if (token) {
  loadNext().catch(onError);
} else {
  signOut('');
}
