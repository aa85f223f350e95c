// End-to-end test of the labeling page: headless Chromium signs in with a token, then labels with the keyboard
// only — 1, 2, skip, tie, undo (the tie), 1, 2, 1 — waiting each time for the page's "Saved", which it shows only
// after the server committed the label. Five labels remain. The Rust test that starts the server
// (crates/serve/tests/labeling.rs, browser_labels_five_pairs_with_the_keyboard) then checks the SQLite rows.
//
//   node label.mjs URL TOKEN
//
// Environment: ACTIVEPREF_CHROMIUM (default /usr/bin/chromium); ACTIVEPREF_SCREENSHOTS=DIR also writes
// DIR/labeling.png and DIR/dashboard.png.
import { chromium } from 'playwright-core';
import path from 'node:path';

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node label.mjs URL TOKEN');
  process.exit(2);
}
const shots = process.env.ACTIVEPREF_SCREENSHOTS;
const TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath: process.env.ACTIVEPREF_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 780 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push('console error: ' + m.text());
  });
  // Nothing in this flow should fail: no missing asset, no refused API call.
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
  });

  await page.goto(url + '/');
  // First visit: the token form.
  await page.locator('#token').fill(token);
  await page.keyboard.press('Enter');
  await page.locator('#work').waitFor({ state: 'visible' });
  const who = await page.locator('#who').textContent();
  console.log(`signed in as ${who}`);

  const queryId = () => page.evaluate(() => document.body.dataset.queryId);
  const statusIs = (state, saved) =>
    page.waitForFunction(
      ([state, saved]) => {
        const s = document.getElementById('status');
        return s.dataset.state === state && (saved === undefined || s.dataset.saved === String(saved));
      },
      [state, saved],
      { timeout: TIMEOUT },
    );
  const nextShown = (before) =>
    page.waitForFunction((b) => document.body.dataset.queryId && document.body.dataset.queryId !== b, before, {
      timeout: TIMEOUT,
    });

  // For the screenshots, read like a person would (so the dashboard's seconds per label are not 0).
  const read = () => (shots ? page.waitForTimeout(1200) : Promise.resolve());

  let saved = 0;
  async function label(key) {
    const before = await queryId();
    await read();
    await page.keyboard.press(key);
    saved += 1;
    await statusIs('saved', saved);
    const text = await page.locator('#status').textContent();
    if (!/Saved/.test(text)) throw new Error(`status after "${key}" is ${JSON.stringify(text)}`);
    await nextShown(before);
    console.log(`key ${key}: pair #${before} ${text.trim()}`);
  }

  await label('1');
  await label('2');
  if (shots) {
    await page.mouse.move(0, 0);
    await page.screenshot({ path: path.join(shots, 'labeling.png') });
  }
  // Skip: nothing saved, another pair shown.
  let before = await queryId();
  await page.keyboard.press('s');
  await statusIs('info');
  await nextShown(before);
  console.log(`key s: skipped pair #${before}`);
  // Tie, then undo it: the same pair comes back and the count of saved labels goes down.
  const tied = await queryId();
  await label('t');
  await page.keyboard.press('u');
  await statusIs('info', saved - 1);
  saved -= 1;
  await page.waitForFunction((id) => document.body.dataset.queryId === id, tied, { timeout: TIMEOUT });
  console.log(`key u: undid the tie on pair #${tied}, shown again`);
  await label('1');
  await label('2');
  await label('1');
  if (saved !== 5) throw new Error(`expected 5 saved labels, counted ${saved}`);

  if (shots) {
    const dash = await context.newPage();
    await dash.setViewportSize({ width: 1360, height: 900 });
    await dash.goto(url + '/dashboard');
    await dash.locator('#rounds tr').first().waitFor();
    await dash.locator('#chart circle').first().waitFor();
    await dash.waitForFunction(() => document.getElementById('updated').textContent.startsWith('live'));
    await dash.screenshot({ path: path.join(shots, 'dashboard.png'), fullPage: true });
    console.log(`screenshots in ${shots}`);
  }
  if (problems.length) throw new Error(problems.join('\n'));
  console.log('labelled 5 pairs with the keyboard');
} catch (e) {
  failed = true;
  console.error('label.mjs failed:', e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
