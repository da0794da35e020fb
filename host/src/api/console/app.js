// payrail admin console: vanilla ES2020, no framework, no build step.
// Served under a strict CSP (script-src 'self', style-src 'self'): no inline
// scripts, handlers or styles. Server data is only ever placed with
// textContent / createElement (it comes from tenants and plugins).
'use strict';
(() => {
  const KEY = 'payrail.key';
  const REFUSED = 'This API key was refused.';
  const STATUSES = ['approved', 'declined', 'authorized', 'captured', 'voided', 'expired'];
  const AUDIT_ACTIONS = ['plugin.deploy', 'pipeline.set', 'pipeline.rollback', 'shadow.set', 'shadow.promote',
    'apikey.create', 'apikey.revoke', 'outbox.retry', 'account.open'];
  const NAV = [
    ['overview', 'Overview'], ['payments', 'Payments'], ['accounts', 'Accounts'],
    ['plugins', 'Plugins & pipelines'], ['outbox', 'Outbox'], ['audit', 'Audit log'], ['keys', 'API keys'],
  ];
  const app = document.getElementById('app');
  let who = null;
  let pollTimer = null;
  let flash = null;
  let renderSeq = 0;

  // ---------- DOM helpers ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    return add(el, children);
  }
  function add(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const dash = '—';
  const show = (v) => (v == null || v === '' ? dash : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const short = (s, n = 12) => (s ? String(s).slice(0, n) : dash);
  const json = (v) => JSON.stringify(v, null, 2) ?? 'null';

  function fmtTime(s) {
    if (!s) return dash;
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return String(s);
    return d.toISOString().slice(0, 19).replace('T', ' ') + 'Z';
  }
  const time = (s) => h('time', { datetime: s || null, title: s || null }, fmtTime(s));

  const digitsCache = new Map();
  function digits(cur) {
    if (!digitsCache.has(cur)) {
      let d = 2;
      try { d = new Intl.NumberFormat('en', { style: 'currency', currency: cur }).resolvedOptions().maximumFractionDigits; } catch { /* unknown code */ }
      digitsCache.set(cur, d);
    }
    return digitsCache.get(cur);
  }
  function money(amount, cur) {
    if (amount == null) return dash;
    const d = digits(cur || 'XXX');
    const n = Number(amount) / 10 ** d;
    return `${n.toLocaleString('en', { minimumFractionDigits: d, maximumFractionDigits: d })} ${cur || ''}`.trim();
  }
  const badge = (s) => h('span', { class: `badge badge-${String(s).replace(/[^a-z_]/gi, '')}` }, show(s));
  const link = (href, text, attrs) => h('a', { href, ...attrs }, text);
  const acctLink = (id) => (id ? link(`#/accounts/${encodeURIComponent(id)}`, id) : dash);
  const payLink = (id) => (id ? link(`#/payments/${encodeURIComponent(id)}`, id, { class: 'mono' }) : dash);
  const jsonDetails = (label, v) => (v == null ? dash : h('details', {}, h('summary', {}, label), h('pre', {}, json(v))));

  function table(headers, rows, attrs) {
    return h('div', { class: 'table-wrap' }, h('table', attrs || {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
      h('tbody', {}, rows.length ? rows : h('tr', { class: 'empty' }, h('td', { colspan: headers.length }, 'Nothing here.')))));
  }
  const row = (cells, attrs) => h('tr', attrs || {}, cells.map((c) => h('td', {}, c)));
  function dl(pairs) {
    return h('dl', { class: 'summary' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }
  function field(label, input) { return h('label', { class: 'field' }, h('span', {}, label), input); }
  function errorBox(e) {
    const code = e && e.code;
    return h('div', { class: 'error', role: 'alert' }, show(e && (e.detail || e.message)), code ? [' ', h('code', {}, code)] : null);
  }
  function section(title, ...children) { return h('section', { class: 'panel' }, h('h2', {}, title), children); }

  // ---------- datetime-local <-> RFC 3339 ----------
  function toRfc3339(v) { const d = new Date(v); return Number.isNaN(d.getTime()) ? v : d.toISOString(); }
  function toLocalInput(iso) {
    const d = new Date(iso);
    if (!iso || Number.isNaN(d.getTime())) return '';
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, code, detail) { super(detail); this.status = status; this.code = code; this.detail = detail; }
  }
  function qs(obj) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(obj || {})) if (v != null && v !== '') p.set(k, v);
    return p.toString();
  }
  async function api(method, path, body, extraHeaders, key = sessionStorage.getItem(KEY)) {
    const headers = { Accept: 'application/json, application/problem+json', ...extraHeaders };
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method, headers, cache: 'no-store', credentials: 'omit',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, 'network_error', `The server could not be reached (${e.message}).`);
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const err = new ApiError(res.status, (data && data.code) || `http_${res.status}`,
        (data && (data.detail || data.title)) || `${method} ${path.split('?')[0]} answered ${res.status}`);
      if (res.status === 401 && who && key === sessionStorage.getItem(KEY)) {
        signOut('Your API key was refused (revoked or expired). Sign in again.');
      }
      throw err;
    }
    return data;
  }
  const get = (path, params) => api('GET', params ? `${path}?${qs(params)}` : path);
  const post = (path, body, headers) => api('POST', path, body || {}, headers);
  const enc = encodeURIComponent;
  // crypto.randomUUID exists only in secure contexts (https, localhost).
  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const x = [...b].map((n) => n.toString(16).padStart(2, '0')).join('');
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  // ---------- routing ----------
  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/overview';
    const i = raw.indexOf('?');
    const path = i < 0 ? raw : raw.slice(0, i);
    const parts = path.split('/').filter(Boolean).map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
    return { parts, params: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1)) };
  }
  function go(path, params) {
    const q = qs(params);
    const next = `#${path}${q ? `?${q}` : ''}`;
    if (location.hash === next) route(); else location.hash = next;
  }
  const rerender = () => route();
  function setFlash(text, kind = 'ok') { flash = { text, kind }; }

  function pager(page, path, params) {
    const base = Object.fromEntries(params);
    if (!page.prev_cursor && !page.next_cursor) return null;
    return h('div', { class: 'pager' },
      h('button', { type: 'button', class: 'secondary', 'data-testid': 'newer', disabled: !page.prev_cursor,
        onclick: () => go(path, { ...base, cursor: page.prev_cursor }) }, '← Newer'),
      h('button', { type: 'button', class: 'secondary', 'data-testid': 'older', disabled: !page.next_cursor,
        onclick: () => go(path, { ...base, cursor: page.next_cursor }) }, 'Older →'));
  }

  // A button that runs an async action, disabling itself meanwhile and
  // reporting failures in `out` (an element with class error).
  function actionButton(label, attrs, fn, out) {
    const b = h('button', { type: 'button', ...attrs }, label);
    b.addEventListener('click', async () => {
      b.disabled = true;
      if (out) out.replaceChildren();
      try { await fn(); } catch (e) { if (out) out.replaceChildren(errorBox(e)); else alert(e.detail || e.message); }
      b.disabled = false;
    });
    return b;
  }

  // ---------- shell ----------
  function showSignIn(message) {
    clearInterval(pollTimer);
    const input = h('input', { type: 'password', id: 'api-key', name: 'api-key', autocomplete: 'off', required: true,
      placeholder: 'pr_…', spellcheck: 'false', 'data-testid': 'api-key' });
    const err = h('div', { id: 'signin-error', class: 'error', role: 'alert', hidden: !message }, message || '');
    const submit = h('button', { type: 'submit', 'data-testid': 'signin' }, 'Sign in');
    const form = h('form', { class: 'signin-card', method: 'post', 'data-testid': 'signin-form' },
      h('div', { class: 'brand brand-lg' }, 'payrail'),
      h('h1', {}, 'Sign in to the console'),
      h('p', { class: 'muted' }, 'Paste an API key. It is kept in this tab only (session storage) and sent as a Bearer token.'),
      field('API key', input), err, submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      submit.disabled = true;
      err.hidden = true;
      try {
        const w = await api('GET', '/v1/whoami', undefined, undefined, key);
        sessionStorage.setItem(KEY, key);
        who = w;
        input.value = '';
        showShell();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        err.textContent = e.status === 401 ? REFUSED : `Sign-in failed: ${e.detail} (${e.code})`;
        err.hidden = false;
        submit.disabled = false;
        input.select();
      }
    });
    app.replaceChildren(h('main', { class: 'signin' }, form));
    input.focus();
  }

  function signOut(message) {
    who = null;
    clearInterval(pollTimer);
    renderSeq++;
    sessionStorage.removeItem(KEY);
    sessionStorage.clear();
    showSignIn(message);
  }

  function showShell() {
    const nav = h('nav', { class: 'sidenav', 'aria-label': 'Sections' },
      NAV.map(([id, label]) => link(`#/${id}`, label, { 'data-nav': id, 'data-testid': `nav-${id}` })));
    app.replaceChildren(
      h('header', { class: 'topbar' },
        h('span', { class: 'brand' }, 'payrail'), h('span', { class: 'brand-sub' }, 'console'),
        h('span', { class: 'spacer' }),
        h('span', { class: 'who' }, 'Tenant ', h('strong', { 'data-testid': 'tenant', id: 'tenant' }, show(who.tenant)),
          h('span', { class: 'sep' }, '·'), 'Key ', h('code', { 'data-testid': 'key-id', id: 'key-id' }, show(who.key_id)),
          h('span', { class: 'sep' }, '·'), (who.scopes || []).map((s) => h('span', { class: 'scope' }, s))),
        h('button', { type: 'button', class: 'secondary', id: 'signout', 'data-testid': 'signout', onclick: () => signOut() }, 'Sign out')),
      h('div', { class: 'shell' }, nav, h('main', { id: 'main', class: 'main', 'aria-live': 'polite' })));
    if (!location.hash || location.hash === '#') location.hash = '#/overview';
    else route();
  }

  async function route() {
    clearInterval(pollTimer);
    pollTimer = null;
    const main = document.getElementById('main');
    if (!who || !main) return;
    const seq = ++renderSeq;
    const { parts, params } = parseHash();
    const [sectionName, id] = parts;
    const navId = sectionName === 'pipelines' ? 'plugins' : sectionName;
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === navId);
    const page = PAGES[sectionName];
    const view = h('div', { class: 'view', 'data-page': sectionName || 'overview' });
    const note = flash;
    flash = null;
    const loading = setTimeout(() => { if (seq === renderSeq) main.classList.add('loading'); }, 150);
    try {
      if (!page) throw new ApiError(404, 'not_found', `No page at ${location.hash}.`);
      add(view, [await page({ id, params, parts })]);
    } catch (e) {
      if (seq !== renderSeq) return;
      add(view, [h('h1', {}, 'Could not load this page'), errorBox(e)]);
    } finally {
      clearTimeout(loading);
    }
    if (seq !== renderSeq) return;
    main.classList.remove('loading');
    main.replaceChildren(note ? h('div', { class: `flash flash-${note.kind}`, id: 'flash', role: 'status' }, note.text) : '', view);
    const title = view.querySelector('h1');
    document.title = `${title ? title.textContent : 'Console'} · payrail`;
  }

  // ---------- metrics ----------
  function parseMetrics(text) {
    const out = new Map();
    const lineRe = /^([a-zA-Z_:][\w:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)/;
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const m = lineRe.exec(line);
      if (!m) continue;
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      if (Number.isNaN(value)) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(/([a-zA-Z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value });
    }
    return out;
  }
  function sumOf(m, name, filter) {
    const s = (m.get(name) || []).filter((x) => !filter || filter(x.labels));
    return s.length ? s.reduce((a, x) => a + x.value, 0) : null;
  }
  function groupBy(m, name, label) {
    const g = new Map();
    for (const x of m.get(name) || []) {
      const k = x.labels[label];
      if (k != null) g.set(k, (g.get(k) || 0) + x.value);
    }
    return g;
  }
  // The upper bound of the bucket holding quantile q of a histogram summed
  // over all its labels but `le`.
  function quantileBound(m, name, q) {
    const byLe = groupBy(m, name, 'le');
    if (!byLe.size) return null;
    const bounds = [...byLe.keys()].map((k) => [k === '+Inf' ? Infinity : Number(k), byLe.get(k)])
      .filter(([b]) => !Number.isNaN(b)).sort((a, b) => a[0] - b[0]);
    const total = bounds.length ? bounds[bounds.length - 1][1] : 0;
    if (!total) return { empty: true };
    let lastFinite = null;
    for (const [b, c] of bounds) {
      if (c >= q * total) return { bound: b, lastFinite };
      lastFinite = b;
    }
    return { bound: Infinity, lastFinite };
  }
  function fmtSeconds(s) {
    if (s < 1e-3) return `${+(s * 1e6).toPrecision(3)} µs`;
    if (s < 1) return `${+(s * 1e3).toPrecision(3)} ms`;
    return `${+s.toPrecision(3)} s`;
  }
  function fmtQuantile(r) {
    if (!r) return dash;
    if (r.empty) return 'no samples';
    if (r.bound === Infinity) return r.lastFinite == null ? dash : `> ${fmtSeconds(r.lastFinite)}`;
    return `≤ ${fmtSeconds(r.bound)}`;
  }
  const tallyTable = (label, body) => h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, label), h('th', {}, 'Count'))), body));
  const fmtCount = (v) => (v == null ? dash : Math.round(v).toLocaleString('en'));

  async function pageOverview() {
    const defs = [
      ['rate', 'Payments / s'], ['approved', 'Approved'], ['declined', 'Declined'], ['plugin_p99', 'Plugin call p99'],
      ['lock_p99', 'Lock wait p99'], ['lag', 'Outbox lag'], ['pending', 'Outbox pending'], ['dead', 'Dead letters'],
    ];
    const v = {};
    const grid = h('div', { class: 'cards', 'data-testid': 'metrics', 'data-state': 'loading' }, defs.map(([k, label]) =>
      h('div', { class: `card metric metric-${k}`, 'data-testid': `metric-${k}` },
        h('div', { class: 'metric-label' }, label), (v[k] = h('div', { class: 'metric-value' }, dash)))));
    const statusBody = h('tbody');
    const codeBody = h('tbody');
    const status = h('p', { class: 'muted', id: 'metrics-status' }, 'Reading /metrics…');
    const err = h('div', { class: 'error', role: 'alert', hidden: true });
    let prev = null;
    const tally = (body, g) => body.replaceChildren(...(g.size
      ? [...g].sort((a, b) => b[1] - a[1]).map(([k, n]) => row([h('code', {}, k), fmtCount(n)]))
      : [h('tr', { class: 'empty' }, h('td', { colspan: 2 }, dash))]));
    async function poll() {
      try {
        const res = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
        if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`);
        const m = parseMetrics(await res.text());
        const now = performance.now();
        const total = sumOf(m, 'payrail_payments_total');
        v.rate.textContent = prev && total != null && prev.total != null && now > prev.t
          ? (Math.max(0, total - prev.total) / ((now - prev.t) / 1000)).toFixed(1) : dash;
        prev = { t: now, total };
        const byStatus = groupBy(m, 'payrail_payments_total', 'status');
        v.approved.textContent = fmtCount(byStatus.get('approved'));
        v.declined.textContent = fmtCount(byStatus.get('declined') ?? sumOf(m, 'payrail_declines_total'));
        v.plugin_p99.textContent = fmtQuantile(quantileBound(m, 'payrail_plugin_call_duration_seconds_bucket', 0.99)
          || quantileBound(m, 'payrail_plugin_call_seconds_bucket', 0.99));
        v.lock_p99.textContent = fmtQuantile(quantileBound(m, 'payrail_lock_wait_seconds_bucket', 0.99));
        const lag = sumOf(m, 'payrail_outbox_lag_seconds');
        v.lag.textContent = lag == null ? dash : fmtSeconds(lag).replace(/^0 µs$/, '0 s');
        v.pending.textContent = fmtCount(sumOf(m, 'payrail_outbox_pending'));
        v.dead.textContent = fmtCount(sumOf(m, 'payrail_outbox_dead'));
        v.dead.parentElement.classList.toggle('alert', (sumOf(m, 'payrail_outbox_dead') || 0) > 0);
        tally(statusBody, byStatus);
        tally(codeBody, groupBy(m, 'payrail_declines_total', 'code'));
        grid.dataset.state = 'ok';
        err.hidden = true;
        status.textContent = `Updated ${new Date().toLocaleTimeString()} · refreshed every 2 s · quantiles are since the server started`;
      } catch (e) {
        grid.dataset.state = 'error';
        err.textContent = `Metrics unavailable: ${e.message}`;
        err.hidden = false;
      }
    }
    poll();
    pollTimer = setInterval(poll, 2000);
    return [h('h1', {}, 'Overview'), status, err, grid,
      h('div', { class: 'columns' }, section('Payments by status', tallyTable('Status', statusBody)),
        section('Declines by code', tallyTable('Code', codeBody)))];
  }

  // ---------- payments ----------
  async function pagePayments({ params }) {
    const f = Object.fromEntries(params);
    const input = (name, attrs) => h('input', { name, value: f[name] || null, ...attrs });
    const form = h('form', { class: 'filters', 'data-testid': 'payment-filters' },
      field('Status', h('select', { name: 'status', 'data-testid': 'filter-status' }, h('option', { value: '' }, 'any'),
        STATUSES.map((s) => h('option', { value: s, selected: f.status === s }, s)))),
      field('Kind', input('kind', { placeholder: 'transfer' })),
      field('Account', input('account', { placeholder: 'account id' })),
      field('Decline code', input('decline_code', { placeholder: 'amount_too_large' })),
      field('Created from', h('input', { name: 'created_from', type: 'datetime-local', value: toLocalInput(f.created_from) || null })),
      field('Created to', h('input', { name: 'created_to', type: 'datetime-local', value: toLocalInput(f.created_to) || null })),
      field('Metadata', input('metadata', { placeholder: 'key=value' })),
      h('div', { class: 'form-actions' }, h('button', { type: 'submit', 'data-testid': 'apply-filters' }, 'Filter'),
        h('button', { type: 'button', class: 'secondary', onclick: () => go('/payments') }, 'Reset')));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = {};
      for (const [k, val] of new FormData(form)) if (val) p[k] = k.startsWith('created_') ? toRfc3339(val) : val.trim();
      go('/payments', p);
    });
    const page = await get('/v1/payments', { limit: 50, ...f });
    const rows = page.data.map((p) => row([
      payLink(p.id), time(p.created_at), show(p.kind), h('span', { class: 'num' }, money(p.amount, p.currency)),
      h('span', {}, acctLink(p.source), ' → ', acctLink(p.destination)), badge(p.status),
      p.decline ? h('code', {}, p.decline.code) : dash,
    ], { 'data-payment-id': p.id }));
    return [h('h1', {}, 'Payments'), form,
      table(['ID', 'Created', 'Kind', 'Amount', 'Source → destination', 'Status', 'Decline'], rows, { 'data-testid': 'payments-table' }),
      pager(page, '/payments', params)];
  }

  async function pagePayment({ id }) {
    const base = `/v1/payments/${enc(id)}`;
    const soft = (p) => p.catch((e) => e);
    const [p, calls, events] = await Promise.all([get(base), soft(get(`${base}/calls`)), soft(get(`${base}/events`))]);
    const out = h('div', { class: 'action-errors' });
    const replayResult = h('div', { id: 'replay-result', class: 'replay-result', 'data-testid': 'replay-result', role: 'status' });
    const actions = [actionButton('Replay', { id: 'replay-button', class: 'secondary', 'data-testid': 'replay' }, async () => {
      replayResult.replaceChildren(h('p', { class: 'muted' }, 'Replaying…'));
      renderReplay(replayResult, await post(`${base}/replay`));
    }, replayResult)];
    if (p.status === 'authorized') {
      const amt = h('input', { type: 'number', min: 1, step: 1, placeholder: `all (${p.amount})`, class: 'narrow',
        title: 'Amount to capture, in minor units (empty: all)', 'data-testid': 'capture-amount' });
      actions.push(h('span', { class: 'inline' }, amt, actionButton('Capture', { 'data-testid': 'capture' }, async () => {
        const body = amt.value ? { amount: Number(amt.value) } : {};
        await post(`${base}/capture`, body, { 'Idempotency-Key': uuid() });
        setFlash('Payment captured.');
        rerender();
      }, out)), actionButton('Void', { class: 'danger', 'data-testid': 'void' }, async () => {
        if (!confirm('Void this authorization? The held funds are released.')) return;
        await post(`${base}/void`, {}, { 'Idempotency-Key': uuid() });
        setFlash('Authorization voided.');
        rerender();
      }, out));
    }
    // One <tbody> per call: its summary row, then its input/output (and logs) folded.
    const callHead = ['Step', 'Role', 'Digest', 'Fuel', 'µs', 'Decision', 'Logs'];
    const callBody = (c) => {
      const logs = c.logs && c.logs.length ? c.logs : null;
      return h('tbody', { class: 'call' },
        row([String(c.step), badge(c.role), h('code', { title: c.digest }, short(c.digest)),
          h('span', { class: 'num' }, fmtCount(c.fuel_used)), h('span', { class: 'num' }, fmtCount(c.duration_us)),
          h('span', {}, badge(c.decision), c.decline ? [' ', h('code', {}, c.decline.code)] : null),
          logs ? `${logs.length} line(s)` : dash]),
        h('tr', { class: 'io-row' }, h('td', { colspan: callHead.length }, h('details', {},
          h('summary', {}, logs ? 'input / output / logs' : 'input / output'),
          h('div', { class: 'io' },
            h('div', {}, h('h4', {}, 'Input'), h('pre', {}, json(c.input))),
            h('div', {}, h('h4', {}, 'Output'), h('pre', {}, json(c.output))),
            logs ? h('div', {}, h('h4', {}, 'Logs'), h('pre', { class: 'logs' }, logs.join('\n'))) : null)))));
    };
    const callList = calls instanceof Error ? [] : calls.data || [];
    const callTable = calls instanceof Error ? errorBox(calls) : h('div', { class: 'table-wrap' },
      h('table', { class: 'calls', 'data-testid': 'calls-table' },
        h('thead', {}, h('tr', {}, callHead.map((x) => h('th', {}, x)))),
        callList.length ? callList.map(callBody)
          : h('tbody', {}, h('tr', { class: 'empty' }, h('td', { colspan: callHead.length }, 'No plugin calls.')))));
    const eventRows = events instanceof Error ? null : (events.data || []).map((e) => row([
      h('code', {}, show(e.topic)), badge(e.state), show(e.attempts), time(e.created_at), time(e.delivered_at),
      show(e.last_error), jsonDetails('payload', e.payload),
    ]));
    return [
      h('div', { class: 'title-row' }, h('h1', {}, 'Payment ', h('span', { class: 'mono' }, p.id)), badge(p.status)),
      p.decline ? h('div', { id: 'decline-reason', class: 'decline', 'data-testid': 'decline-reason' },
        h('strong', {}, 'Declined: '), h('code', {}, p.decline.code), ' — ', show(p.decline.message)) : null,
      h('div', { class: 'toolbar' }, actions), out, replayResult,
      h('div', { class: 'columns' },
        section('Summary', dl([
          ['Kind', show(p.kind)], ['Amount', money(p.amount, p.currency)], ['Source', acctLink(p.source)],
          ['Destination', acctLink(p.destination)], ['Created', time(p.created_at)],
          ['Annotations', jsonDetails('annotations', p.annotations)], ['Metadata', jsonDetails('metadata', p.metadata)],
        ])),
        section('Postings', table(['Account', 'Amount'], (p.postings || []).map((x) => row([acctLink(x.account),
          h('span', { class: `num ${x.amount < 0 ? 'neg' : ''}` }, money(x.amount, x.currency))]))))),
      section('Pipeline steps', callTable),
      section('Events', eventRows ? table(['Topic', 'State', 'Attempts', 'Created', 'Delivered', 'Last error', 'Payload'], eventRows)
        : errorBox(events)),
    ];
  }

  function renderReplay(el, r) {
    el.dataset.matched = String(!!r.matched);
    const calls = r.calls || [];
    if (r.matched) {
      el.replaceChildren(h('p', { class: 'ok' }, `Replay matched: all ${calls.length} plugin call(s) reproduced the journaled output exactly.`));
      return;
    }
    el.replaceChildren(h('p', { class: 'warn' }, 'Replay found differences from the journal:'),
      table(['Step', 'Role', 'Digest', 'Fuel (journal / replay)', 'Verdict', 'Details'], calls.map((c) => row([
        String(c.step), show(c.role), h('code', {}, short(c.digest)), `${show(c.fuel_journaled)} / ${show(c.fuel_replayed)}`,
        badge(c.verdict),
        c.differences ? h('ul', { class: 'diffs' }, c.differences.map((d) => h('li', {}, h('code', {}, d.path), ': ',
          h('span', { class: 'old' }, JSON.stringify(d.journaled)), ' → ', h('span', { class: 'new' }, JSON.stringify(d.replayed)))))
          : show(c.detail || (c.code ? `${c.code}: ${c.message}` : '')),
      ]))));
  }

  // ---------- accounts ----------
  async function pageAccounts({ params }) {
    const f = Object.fromEntries(params);
    const form = h('form', { class: 'filters' },
      field('Currency', h('input', { name: 'currency', value: f.currency || null, placeholder: 'USD', class: 'narrow' })),
      h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Filter')));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); go('/accounts', { currency: form.currency.value.trim() }); });
    const page = await get('/v1/accounts', { limit: 50, ...f });
    return [h('h1', {}, 'Accounts'), form,
      table(['ID', 'Currency', 'Balance', 'Available', 'Created'], page.data.map((a) => row([
        acctLink(a.id), show(a.currency), h('span', { class: 'num' }, money(a.balance, a.currency)),
        h('span', { class: 'num' }, money(a.available, a.currency)), time(a.created_at)]))),
      pager(page, '/accounts', params)];
  }

  async function pageAccount({ id, params }) {
    const base = `/v1/accounts/${enc(id)}`;
    const [a, entries, holds] = await Promise.all([
      get(base), get(`${base}/entries`, { limit: 50, cursor: params.get('cursor') }),
      get('/v1/holds', { account: id, limit: 50 }).catch((e) => e)]);
    const m = (v) => money(v, a.currency);
    const atOut = h('div', { 'data-testid': 'balance-at-result' });
    const atInput = h('input', { type: 'datetime-local', required: true, name: 'at' });
    const atForm = h('form', { class: 'filters' }, field('At', atInput),
      h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Balance at')), atOut);
    atForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const r = await get(`${base}/balance`, { at: toRfc3339(atInput.value) });
        atOut.replaceChildren(h('p', { class: 'result' }, 'Balance at ', time(r.at), ': ', h('strong', {}, money(r.balance, r.currency))));
      } catch (e) { atOut.replaceChildren(errorBox(e)); }
    });
    const from = h('input', { type: 'datetime-local', required: true });
    const to = h('input', { type: 'datetime-local', required: true });
    const stOut = h('div', { 'data-testid': 'statement-result' });
    const stForm = h('form', { class: 'filters' }, field('From', from), field('To', to),
      h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Statement')));
    stForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const s = await get(`${base}/statement`, { from: toRfc3339(from.value), to: toRfc3339(to.value) });
        const sm = (v) => money(v, s.currency);
        stOut.replaceChildren(dl([['Opening balance', sm(s.opening_balance)], ['Credits', sm(s.credits)], ['Debits', sm(s.debits)],
          ['Closing balance', sm(s.closing_balance)], ['Entries', `${(s.entries || []).length}${s.truncated ? ' (truncated)' : ''}`]]));
      } catch (e) { stOut.replaceChildren(errorBox(e)); }
    });
    return [
      h('h1', {}, 'Account ', h('span', { class: 'mono' }, a.id)),
      h('div', { class: 'cards' },
        h('div', { class: 'card metric' }, h('div', { class: 'metric-label' }, 'Balance'), h('div', { class: 'metric-value', 'data-testid': 'balance' }, m(a.balance))),
        h('div', { class: 'card metric' }, h('div', { class: 'metric-label' }, 'Available'), h('div', { class: 'metric-value', 'data-testid': 'available' }, m(a.available))),
        h('div', { class: 'card metric' }, h('div', { class: 'metric-label' }, 'Currency'), h('div', { class: 'metric-value' }, show(a.currency)))),
      h('div', { class: 'columns' },
        section('Details', dl([['Allow negative', a.allow_negative ? 'yes' : 'no'], ['Created', time(a.created_at)], ['Metadata', jsonDetails('metadata', a.metadata)]])),
        section('Point-in-time balance', atForm), section('Statement', stForm, stOut)),
      section('Entries', table(['Entry', 'Created', 'Payment', 'Amount', 'Balance after'], entries.data.map((e) => row([
        h('code', {}, show(e.id)), time(e.created_at), payLink(e.payment_id),
        h('span', { class: `num ${e.amount < 0 ? 'neg' : ''}` }, money(e.amount, e.currency)),
        h('span', { class: 'num' }, money(e.balance_after, e.currency))]))), pager(entries, `/accounts/${enc(id)}`, params)),
      section('Holds', holds instanceof Error ? errorBox(holds) : table(['Payment', 'Destination', 'Amount', 'Captured', 'State', 'Expires', 'Resolved'],
        holds.data.map((x) => row([payLink(x.payment_id), acctLink(x.destination), money(x.amount, x.currency),
          x.captured_amount == null ? dash : money(x.captured_amount, x.currency), badge(x.state), time(x.expires_at), time(x.resolved_at)])))),
    ];
  }

  // ---------- plugins & pipelines ----------
  const kib = (n) => h('span', { class: 'num', title: `${n} bytes` }, n == null ? dash : `${(n / 1024).toFixed(1)} KiB`);
  const stepNames = (steps) => (steps || []).map((s) => s.plugin + (s.candidate ? ` (+${s.candidate.plugin})` : '')).join(' → ') || dash;

  async function pagePlugins({ params }) {
    const name = params.get('plugin');
    const [plugins, pipelines, detail] = await Promise.all([get('/v1/plugins', { limit: 200 }), get('/v1/pipelines', { limit: 200 }),
      name ? get(`/v1/plugins/${enc(name)}`).catch((e) => e) : null]);
    return [h('h1', {}, 'Plugins & pipelines'),
      section('Plugins', table(['Name', 'Version', 'Digest', 'Size', 'Deployed'], plugins.data.map((p) => row([
          link(`#/plugins?${qs({ plugin: p.name })}`, p.name, { 'data-plugin': p.name }), show(p.version),
          h('code', { title: p.digest }, short(p.digest)), kib(p.size_bytes), time(p.deployed_at)],
        { class: p.name === name ? 'selected' : null })))),
      detail ? section(`Versions of ${name}`, detail instanceof Error ? errorBox(detail)
        : table(['Version', 'Digest', 'Size', 'Signature', 'Deployed'], detail.versions.map((x) => row([show(x.version),
          h('code', { title: x.digest }, short(x.digest, 16)), kib(x.size_bytes),
          x.signature ? h('code', { class: 'wrap', title: x.signature }, short(x.signature, 32) + '…') : h('span', { class: 'muted' }, 'unsigned'),
          time(x.deployed_at)])), { 'data-testid': 'plugin-versions' })) : null,
      section('Pipelines', table(['Kind', 'Version', 'Steps'], pipelines.data.map((p) => row([
          link(`#/pipelines/${enc(p.kind)}`, p.kind, { 'data-pipeline': p.kind }), `v${p.version}`, stepNames(p.steps)]))))];
  }

  function jsonLines(v, other) {
    const mine = json(v).split('\n');
    const theirs = new Set(json(other).split('\n'));
    return mine.map((l) => [h('span', { class: theirs.has(l) ? 'line' : 'line changed' }, l), '\n']);
  }

  async function pagePipeline({ id: kind }) {
    const base = `/v1/pipelines/${enc(kind)}`;
    const [p, history, shadow] = await Promise.all([get(base), get(`${base}/history`), get(`${base}/shadow`).catch((e) => e)]);
    const out = h('div', { class: 'action-errors' });
    const steps = table(['Step', 'Plugin', 'Digest', 'Config', 'Candidate'], p.steps.map((s, i) => row([String(i), s.plugin,
      h('code', { title: s.digest }, short(s.digest)), jsonDetails('config', s.config),
      s.candidate ? h('span', { class: 'candidate' }, s.candidate.plugin, ' ', h('code', {}, short(s.candidate.digest))) : dash])));
    const hist = table(['Version', 'Note', 'Created', 'Steps', ''], (history.data || []).map((v) => row([
      `v${v.version}`, show(v.note), time(v.created_at), stepNames(v.steps),
      v.version === p.version ? h('span', { class: 'badge badge-approved' }, 'current')
        : actionButton('Roll back to this version', { class: 'secondary small', 'data-rollback-version': v.version }, async () => {
          const np = await post(`${base}/rollback`, { version: v.version });
          setFlash(`Rolled back to v${v.version}: the pipeline is now at v${np.version}.`);
          rerender();
        }, out)], { 'data-version': v.version })));
    // Shadow: one block per report entry, plus the current candidates that
    // have no shadow calls yet.
    const entries = shadow instanceof Error ? [] : [...(shadow.steps || [])];
    p.steps.forEach((s, i) => {
      if (s.candidate && !entries.some((e) => e.step === i && e.candidate_digest === s.candidate.digest)) {
        entries.push({ step: i, live_digest: s.digest, candidate_digest: s.candidate.digest, calls: 0, examples: [] });
      }
    });
    const shadowBlocks = entries.sort((a, b) => a.step - b.step).map((e) => {
      const live = p.steps[e.step];
      const current = !!(live && live.candidate && live.candidate.digest === e.candidate_digest);
      const n = (a, b) => fmtCount(e[a] ?? e[b] ?? 0);
      return h('div', { class: `shadow-step${current ? '' : ' past'}`, 'data-shadow-step': e.step, 'data-current': String(current) },
        h('div', { class: 'shadow-head' },
          h('h3', {}, `Step ${e.step}: `, e.live_plugin || (live && live.plugin) || 'live', ' ', h('code', {}, short(e.live_digest)),
            ' vs candidate ', e.candidate_plugin || (current ? live.candidate.plugin : ''), ' ', h('code', {}, short(e.candidate_digest))),
          current ? actionButton('Promote', { 'data-promote-step': e.step }, async () => {
            const np = await post(`${base}/shadow/promote`, { step: e.step });
            setFlash(`Promoted the candidate of step ${e.step}: the pipeline is now at v${np.version}.`);
            rerender();
          }, out) : h('span', { class: 'muted' }, 'not the current candidate')),
        h('div', { class: 'counts' },
          h('span', {}, 'calls ', h('strong', {}, n('calls', 'calls'))),
          h('span', { class: 'agree' }, 'agreed ', h('strong', { 'data-testid': 'agreed' }, n('agree', 'agreed'))),
          h('span', { class: 'disagree' }, 'disagreed ', h('strong', { 'data-testid': 'disagreed' }, n('disagree', 'disagreed'))),
          h('span', {}, 'faulted ', h('strong', {}, n('faults', 'faulted')))),
        (e.examples || []).map((x) => h('div', { class: 'example' },
          h('div', { class: 'example-head' }, 'Payment ', payLink(x.payment_id),
            x.differences && x.differences.length ? [' · differs at ', x.differences.map((d) => h('code', {}, d.path)).reduce((acc, c) => [...acc, acc.length ? ', ' : '', c], [])] : null),
          h('div', { class: 'diff' },
            h('div', {}, h('h4', {}, 'Live'), h('pre', { class: 'live' }, jsonLines(x.live, x.candidate ?? x.live))),
            h('div', {}, h('h4', {}, 'Candidate'), x.candidate_error && x.candidate == null
              ? h('pre', { class: 'candidate-error' }, x.candidate_error) : h('pre', { class: 'cand' }, jsonLines(x.candidate, x.live)))))));
    });
    return [
      h('div', { class: 'title-row' }, h('h1', {}, 'Pipeline ', h('span', { class: 'mono' }, p.kind)),
        h('span', { class: 'version', id: 'pipeline-version', 'data-testid': 'pipeline-version' }, `v${p.version}`)),
      out, section('Current steps', steps), section('History', hist),
      section('Shadow candidates', shadow instanceof Error ? errorBox(shadow) : null,
        shadowBlocks.length ? shadowBlocks : h('p', { class: 'muted', 'data-testid': 'no-candidates' }, 'No step has a shadow candidate.')),
    ];
  }

  // ---------- outbox ----------
  async function pageOutbox({ params }) {
    const [ob, dead] = await Promise.all([get('/v1/outbox'), get('/v1/outbox/dead-letters', { limit: 50, cursor: params.get('cursor') })]);
    const out = h('div', { class: 'action-errors' });
    const retry = async (body) => {
      const r = await post('/v1/outbox/dead-letters/retry', body);
      setFlash(`Requeued ${r.requeued} dead letter(s).`);
      rerender();
    };
    return [h('h1', {}, 'Outbox'), out,
      h('div', { class: 'columns' },
        section('Pending by topic', table(['Topic', 'Pending', 'Oldest'], (ob.pending || []).map((x) => row([h('code', {}, x.topic),
          fmtCount(x.count), time(x.oldest_created_at)])))),
        section('Dead letters', h('p', { class: 'big' }, h('strong', { 'data-testid': 'dead-count' }, fmtCount(ob.dead)), ' events gave up'),
          actionButton('Retry all', { class: 'secondary', 'data-testid': 'retry-all', disabled: !ob.dead }, () => retry({ all: true }), out))),
      section('Dead letters', table(['ID', 'Topic', 'Key', 'Attempts', 'Last error', 'Created', ''], dead.data.map((d) => row([
        show(d.id), h('code', {}, d.topic), h('code', {}, show(d.key)), show(d.attempts), h('span', { class: 'wrap' }, show(d.last_error)),
        time(d.created_at), actionButton('Retry', { class: 'secondary small', 'data-retry-id': d.id }, () => retry({ ids: [d.id] }), out),
      ], { 'data-dead-letter': d.id })), { 'data-testid': 'dead-letters' }), pager(dead, '/outbox', params))];
  }

  // ---------- audit log ----------
  async function pageAudit({ params }) {
    const f = Object.fromEntries(params);
    const action = h('input', { name: 'action', list: 'audit-actions', value: f.action || null, placeholder: 'any action', 'data-testid': 'filter-action' });
    const form = h('form', { class: 'filters' }, field('Action', action),
      h('datalist', { id: 'audit-actions' }, AUDIT_ACTIONS.map((a) => h('option', { value: a }))),
      h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Filter'),
        h('button', { type: 'button', class: 'secondary', onclick: () => go('/audit') }, 'Reset')));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); go('/audit', { action: action.value.trim() }); });
    const page = await get('/v1/audit-log', { limit: 50, ...f });
    return [h('h1', {}, 'Audit log'), form,
      table(['At', 'Key', 'Action', 'Target', 'Before', 'After'], page.data.map((x) => row([time(x.at), h('code', {}, show(x.key_id)),
        h('code', { class: 'action' }, show(x.action)), h('span', { class: 'wrap' }, show(x.target)),
        jsonDetails('before', x.before), jsonDetails('after', x.after)], { 'data-action': x.action })), { 'data-testid': 'audit-table' }),
      pager(page, '/audit', params)];
  }

  // ---------- API keys ----------
  async function pageKeys({ params }) {
    const page = await get('/v1/api-keys', { limit: 50, cursor: params.get('cursor') });
    const out = h('div', { class: 'action-errors' });
    const secretBox = h('div');
    const scopes = ['payments', 'admin'].map((s) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'scopes', value: s, checked: s === 'payments' }), s));
    const expires = h('input', { type: 'datetime-local', name: 'expires_at' });
    const form = h('form', { class: 'filters', 'data-testid': 'create-key' },
      h('fieldset', { class: 'field' }, h('span', {}, 'Scopes'), h('div', { class: 'checks' }, scopes)),
      field('Expires (optional)', expires), h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Create key')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      out.replaceChildren();
      const body = { scopes: scopes.map((l) => l.firstChild).filter((i) => i.checked).map((i) => i.value) };
      if (expires.value) body.expires_at = toRfc3339(expires.value);
      try {
        const k = await post('/v1/api-keys', body);
        const tbody = document.querySelector('[data-testid=keys-table] tbody');
        if (tbody) tbody.prepend(keyRow(k));
        secretBox.replaceChildren(h('div', { class: 'secret', 'data-testid': 'new-secret' },
          h('p', {}, h('strong', {}, `Key ${k.id} created.`), ' Copy its secret now: it is shown only once.'),
          h('code', { id: 'new-secret' }, k.secret)));
      } catch (e) { out.replaceChildren(errorBox(e)); }
    });
    const keyRow = (k) => row([h('code', {}, show(k.id)), (k.scopes || []).map((s) => h('span', { class: 'scope' }, s)),
      time(k.created_at), time(k.expires_at), time(k.last_used_at),
      k.revoked_at ? h('span', {}, badge('revoked'), ' ', time(k.revoked_at)) : badge('active'),
      k.revoked_at || k.id === who.key_id ? (k.id === who.key_id ? h('span', { class: 'muted' }, 'this session') : '')
        : actionButton('Revoke', { class: 'danger small', 'data-revoke-id': k.id }, async () => {
          if (!confirm(`Revoke key ${k.id}? Requests with it will be refused.`)) return;
          await api('DELETE', `/v1/api-keys/${enc(k.id)}`);
          setFlash(`Key ${k.id} revoked.`);
          rerender();
        }, out)], { 'data-key-id': k.id });
    return [h('h1', {}, 'API keys'), section('Create a key', form, secretBox), out,
      table(['ID', 'Scopes', 'Created', 'Expires', 'Last used', 'State', ''], page.data.map(keyRow), { 'data-testid': 'keys-table' }),
      pager(page, '/keys', params)];
  }

  const PAGES = {
    overview: pageOverview, payments: (c) => (c.id ? pagePayment(c) : pagePayments(c)),
    accounts: (c) => (c.id ? pageAccount(c) : pageAccounts(c)), plugins: pagePlugins,
    pipelines: (c) => (c.id ? pagePipeline(c) : (go('/plugins'), [])), outbox: pageOutbox, audit: pageAudit, keys: pageKeys,
  };

  // ---------- boot ----------
  async function boot() {
    window.addEventListener('hashchange', route);
    const key = sessionStorage.getItem(KEY);
    if (!key) return showSignIn();
    try {
      who = await api('GET', '/v1/whoami', undefined, undefined, key);
      showShell();
    } catch (e) {
      if (e.status === 401) sessionStorage.removeItem(KEY);
      showSignIn(e.status === 401 ? REFUSED : `Could not check the saved key: ${e.detail} (${e.code})`);
    }
  }
  boot();
})();
