// Drives the payrail web console (/console) in Debian's headless Chromium
// against a running `payrail serve` that a Rust test prepared. Inputs come
// from environment variables (see README of the brief in the Rust test):
//   PAYRAIL_URL, PAYRAIL_ADMIN_KEY, PAYRAIL_DECLINED_PAYMENT, PAYRAIL_DECLINE_CODE,
//   PAYRAIL_PIPELINE_KIND, PAYRAIL_ROLLBACK_TO, PAYRAIL_SHADOW_KIND,
//   PAYRAIL_SHADOW_STEP, PAYRAIL_DEAD_LETTER, optional PAYRAIL_SCREENSHOTS, CHROMIUM.
// Prints `ok - <step>` per step; exits non-zero on the first failure, and on
// any browser console error, page error or CSP violation.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`not ok - setup: environment variable ${name} is not set`);
    process.exit(2);
  }
  return v;
}
const BASE = need('PAYRAIL_URL').replace(/\/+$/, '');
const ADMIN_KEY = need('PAYRAIL_ADMIN_KEY');
const DECLINED = need('PAYRAIL_DECLINED_PAYMENT');
const DECLINE_CODE = need('PAYRAIL_DECLINE_CODE');
const PIPELINE_KIND = need('PAYRAIL_PIPELINE_KIND');
const ROLLBACK_TO = need('PAYRAIL_ROLLBACK_TO');
const SHADOW_KIND = need('PAYRAIL_SHADOW_KIND');
const SHADOW_STEP = need('PAYRAIL_SHADOW_STEP');
const DEAD_LETTER = need('PAYRAIL_DEAD_LETTER');
const SHOTS = process.env.PAYRAIL_SCREENSHOTS || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// A wrong key of the same shape as the real one (pr_ and hex): its last digit changed.
const WRONG_KEY = ADMIN_KEY.slice(0, -1) + (ADMIN_KEY.endsWith('0') ? '1' : '0');
const SECRETS = [ADMIN_KEY, WRONG_KEY].flatMap((k) => [k, encodeURIComponent(k)]);

const q = (s) => JSON.stringify(String(s)); // a quoted CSS attribute value
let browser;
let page;
let passed = 0;
let phase = 'setup';
const problems = [];
const requests = [];
const navigations = [];

const watchdog = setTimeout(() => fail('watchdog', new Error('the whole scenario took over 240 s')), 240_000);
watchdog.unref();

async function fail(name, err) {
  console.error(`not ok - ${name}`);
  console.error(`  ${String((err && err.stack) || err).split('\n').join('\n  ')}`);
  if (problems.length) console.error(`  browser problems:\n    ${problems.join('\n    ')}`);
  if (page && SHOTS) {
    await page.screenshot({ path: join(SHOTS, 'failure.png') }).catch(() => {});
    console.error(`  screenshot of the failure: ${join(SHOTS, 'failure.png')}`);
  }
  if (page) console.error(`  page URL: ${redact(page.url())}`);
  await browser?.close().catch(() => {});
  process.exit(1);
}

function redact(s) {
  let out = String(s);
  for (const k of SECRETS) out = out.split(k).join('<key>');
  return out;
}

async function step(name, fn) {
  phase = name;
  try {
    await fn();
    if (problems.length) throw new Error('the browser reported problems during this step (listed below)');
  } catch (e) {
    await fail(name, e);
  }
  passed += 1;
  console.log(`ok - ${name}`);
}

async function shot(name) {
  if (!SHOTS) return;
  await page.waitForTimeout(150); // let transitions settle
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

async function nav(id, heading) {
  await page.click(`[data-testid="nav-${id}"]`);
  await page.waitForSelector(`.view[data-page="${id}"] h1`);
  if (heading) assert.match(await page.textContent('.view h1'), heading);
}

const text = async (sel) => ((await page.textContent(sel)) || '').trim();
const versionOf = async () => {
  const m = /v(\d+)/.exec(await text('#pipeline-version'));
  assert.ok(m, 'the #pipeline-version element shows no version number');
  return Number(m[1]);
};

async function main() {
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.setDefaultTimeout(15_000);

  // Everything the browser complains about fails the run, except the one 401
  // that the wrong-key step provokes on purpose.
  const expected401 = (url) => phase.startsWith('1.') && new URL(url).pathname === '/v1/whoami';
  page.on('console', (m) => {
    const t = m.text();
    const csp = /Content[- ]Security[- ]Policy/i.test(t);
    if (m.type() !== 'error' && !csp) return;
    if (!csp && /status of 401/.test(t) && phase.startsWith('1.')) return;
    problems.push(`console ${m.type()}: ${redact(t)}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${redact(e.message)}`));
  page.on('request', (r) => requests.push({ url: r.url(), body: r.postData() || '' }));
  page.on('requestfailed', (r) => {
    const why = r.failure()?.errorText || '';
    if (!/ERR_ABORTED/.test(why)) problems.push(`request failed: ${r.method()} ${redact(r.url())}: ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !(r.status() === 401 && expected401(r.url()))) {
      problems.push(`HTTP ${r.status()} for ${r.request().method()} ${redact(r.url())}`);
    }
  });
  page.on('framenavigated', (f) => navigations.push(f.url()));
  // A CSP violation also reaches the page as an event: report it on the console.
  await context.addInitScript(() => document.addEventListener('securitypolicyviolation', (e) =>
    console.error(`Content Security Policy violation: ${e.violatedDirective} blocked ${e.blockedURI}`)));

  await step('1. a wrong key is refused and not kept', async () => {
    const res = await page.goto(`${BASE}/console`);
    assert.equal(res.status(), 200, 'GET /console');
    const csp = res.headers()['content-security-policy'] || '';
    assert.match(csp, /script-src 'self'/, `GET /console sends a strict Content-Security-Policy (got ${JSON.stringify(csp)})`);
    await page.fill('#api-key', WRONG_KEY);
    await page.click('[data-testid="signin"]');
    await page.waitForSelector('#signin-error:not([hidden])');
    assert.match(await text('#signin-error'), /refused/i);
    const stored = await page.evaluate(() => ({
      key: sessionStorage.getItem('payrail.key'),
      values: [...Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),
        ...Object.keys(localStorage).map((k) => localStorage.getItem(k))],
    }));
    assert.equal(stored.key, null, 'sessionStorage payrail.key after a refused key');
    assert.ok(!stored.values.some((v) => v && v.includes(WRONG_KEY)), 'the refused key is stored in web storage');
    assert.ok(await page.isVisible('#api-key'), 'still on the sign-in page');
    for (const u of [page.url(), ...navigations]) assert.ok(!SECRETS.some((k) => u.includes(k)), 'the key appears in the page URL');
  });

  let whoami;
  await step('2. the admin key signs in and the header shows the tenant', async () => {
    const r = await fetch(`${BASE}/v1/whoami`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } });
    assert.equal(r.status, 200, 'GET /v1/whoami with the admin key');
    whoami = await r.json();
    await page.fill('#api-key', ADMIN_KEY);
    await page.click('[data-testid="signin"]');
    await page.waitForSelector('[data-testid="tenant"]');
    assert.equal(await text('[data-testid="tenant"]'), String(whoami.tenant));
    assert.equal(await text('[data-testid="key-id"]'), String(whoami.key_id));
    assert.equal(await page.evaluate(() => sessionStorage.getItem('payrail.key')), ADMIN_KEY);
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
    for (const u of [page.url(), ...navigations]) assert.ok(!SECRETS.some((k) => u.includes(k)), 'the key appears in the page URL');
  });

  await step('overview reads /metrics', async () => {
    await page.waitForSelector('.view[data-page="overview"] h1');
    await page.waitForSelector('[data-testid="metrics"][data-state="ok"]');
    if (SHOTS) {
      // payments/s needs two polls (2 s apart); wait for it, briefly.
      await page.waitForFunction(() => document.querySelector('[data-testid="metric-rate"] .metric-value')?.textContent !== '—',
        null, { timeout: 5000 }).catch(() => {});
      await shot('overview');
    }
  });

  await step('3. payments filtered by status=declined list the declined payment, which shows its decline reason', async () => {
    await nav('payments', /Payments/);
    await page.selectOption('[data-testid="filter-status"]', 'declined');
    await page.click('[data-testid="apply-filters"]');
    await page.waitForFunction(() => location.hash.includes('status=declined'));
    const rowSel = `[data-testid="payments-table"] tr[data-payment-id=${q(DECLINED)}]`;
    // The filtered table replaces the unfiltered one: wait until every row is declined.
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('[data-testid="payments-table"] tbody tr[data-payment-id]')];
      return rows.some((r) => r.dataset.paymentId === id)
        && rows.every((r) => r.querySelector('.badge')?.textContent === 'declined');
    }, DECLINED).catch(async () => {
      const statuses = await page.$$eval('[data-testid="payments-table"] tbody tr[data-payment-id] .badge', (b) => b.map((x) => x.textContent));
      throw new Error(`the declined payment ${DECLINED} is not listed under status=declined, or other statuses are (${statuses})`);
    });
    await shot('payments');
    await page.click(`${rowSel} a[href^="#/payments/"]`);
    await page.waitForSelector('#decline-reason');
    assert.ok((await text('#decline-reason')).includes(DECLINE_CODE), `#decline-reason: ${await text('#decline-reason')}`);
  });

  await step('4. replaying the payment matches the journal', async () => {
    await page.click('#replay-button');
    await page.waitForSelector('#replay-result[data-matched]');
    assert.equal(await page.getAttribute('#replay-result', 'data-matched'), 'true', await text('#replay-result'));
    assert.match(await text('#replay-result'), /match/i);
    await shot('payment');
  });

  await step('account page shows the balance and its entries', async () => {
    await page.click('.summary a[href^="#/accounts/"]');
    await page.waitForSelector('.view[data-page="accounts"] [data-testid="balance"]');
    assert.notEqual(await text('[data-testid="balance"]'), '');
    assert.ok(await page.$('.view[data-page="accounts"] table'), 'an entries table');
    await shot('account');
  });

  await step(`5. rolling back pipeline ${PIPELINE_KIND} to v${ROLLBACK_TO} makes a newer version`, async () => {
    await nav('plugins', /Plugins/);
    await page.click(`a[data-pipeline=${q(PIPELINE_KIND)}]`);
    await page.waitForSelector('#pipeline-version');
    const before = await versionOf();
    await page.click(`[data-rollback-version=${q(ROLLBACK_TO)}]`);
    await page.waitForFunction((b) => {
      const m = /v(\d+)/.exec(document.querySelector('#pipeline-version')?.textContent || '');
      return m && Number(m[1]) > b;
    }, before);
    assert.match(await text('#flash'), /Rolled back/);
  });

  await step(`6. promoting the shadow candidate of ${SHADOW_KIND} step ${SHADOW_STEP}`, async () => {
    await nav('plugins', /Plugins/);
    await page.click(`a[data-pipeline=${q(SHADOW_KIND)}]`);
    const button = `[data-promote-step=${q(SHADOW_STEP)}]`;
    await page.waitForSelector(`.shadow-step[data-shadow-step=${q(SHADOW_STEP)}][data-current="true"] ${button}`);
    assert.ok(await page.$('.shadow-step .counts'), 'the shadow report shows agree/disagree counts');
    const before = await versionOf();
    await page.locator('.shadow-step').first().scrollIntoViewIfNeeded();
    await shot('pipeline'); // the side-by-side shadow diff
    await page.click(button);
    await page.waitForSelector('#flash');
    assert.match(await text('#flash'), /Promoted/);
    assert.equal(await page.$(button), null, 'the step still offers a candidate to promote');
    assert.ok(await versionOf() >= before, 'the pipeline version went back');
  });

  await step(`7. retrying dead letter ${DEAD_LETTER} takes it off the dead letters`, async () => {
    await nav('outbox', /Outbox/);
    const button = `[data-testid="dead-letters"] [data-retry-id=${q(DEAD_LETTER)}]`;
    await page.waitForSelector(button);
    await page.click(button);
    await page.waitForSelector('#flash');
    assert.match(await text('#flash'), /Requeued/);
    await page.waitForSelector(button, { state: 'detached' });
    await shot('outbox');
  });

  await step('8. the audit log records the rollback, the promotion and the retry', async () => {
    await nav('audit', /Audit log/);
    await page.waitForSelector('[data-testid="audit-table"] tr[data-action]');
    await shot('audit');
    for (const action of ['pipeline.rollback', 'shadow.promote', 'outbox.retry']) {
      await page.fill('[data-testid="filter-action"]', action);
      await page.press('[data-testid="filter-action"]', 'Enter');
      await page.waitForFunction((a) => location.hash.includes(`action=${encodeURIComponent(a)}`), action);
      // The filtered table replaces the previous one: wait until it has rows, all of this action.
      await page.waitForFunction((a) => {
        const rows = [...document.querySelectorAll('[data-testid="audit-table"] tr[data-action]')];
        return rows.length > 0 && rows.every((r) => r.dataset.action === a);
      }, action).catch(async () => {
        const seen = await page.$$eval('[data-testid="audit-table"] tr[data-action]', (rows) => rows.map((r) => r.dataset.action));
        throw new Error(`no audit row for ${action} under the filter action=${action} (rows: ${seen.join(', ') || 'none'})`);
      });
    }
  });

  await step('9. the key never appears in a request URL or body', async () => {
    assert.ok(requests.length > 10, `only ${requests.length} requests recorded`);
    const leaks = requests.filter((r) => SECRETS.some((k) => r.url.includes(k) || r.body.includes(k)));
    // The sign-in whoami carries the key in the Authorization header only.
    assert.deepEqual(leaks.map((r) => redact(r.url)), [], 'requests carrying the key outside the Authorization header');
    for (const u of [page.url(), ...navigations]) assert.ok(!SECRETS.some((k) => u.includes(k)), 'the key appears in the page URL');
  });

  await step('signing out clears the session', async () => {
    await page.click('[data-testid="signout"]');
    await page.waitForSelector('#api-key');
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  });

  await browser.close();
  console.log(`# console: all ${passed} steps passed`);
}

main().catch((e) => fail(phase, e));
