// Activity: requests in flight (events `inflight`, with Cancel), recent
// requests (GET /api/metrics/activity, refreshed on `activity` events) with
// tokens and speeds, totals (GET /api/metrics/stats) and a capture viewer
// (GET /api/captures/<id>).

import {
  h, fill, getJSON, request, fmtDuration, fmtBytes, fmtNum, fmtTime, debounce, toast, busy,
} from '../lib.js';
import { bus, store } from '../state.js';

export const title = 'Activity';

const LIMIT = 25;
let page = 1;
let totalPages = 1;
let statsBox, inflightBody, inflightEmpty, activityBody, activityEmpty, pager, pageInfo, dialog;
let visible = false;
let ticker = null;
let stale = true;

export function mount(root) {
  statsBox = h('div', { class: 'stat-cards', id: 'activity-stats' });
  inflightBody = h('tbody', { id: 'inflight-rows' });
  inflightEmpty = h('p', { class: 'empty', id: 'inflight-empty' }, 'Nothing in flight.');
  activityBody = h('tbody', { id: 'activity-rows' });
  activityEmpty = h('p', { class: 'empty', hidden: true }, 'No requests yet.');
  pageInfo = h('span', { class: 'muted small', role: 'status' });
  const prev = h('button', { class: 'btn ghost', type: 'button', 'aria-label': 'Previous page', onclick: () => go(page - 1) }, '‹ Newer');
  const next = h('button', { class: 'btn ghost', type: 'button', 'aria-label': 'Next page', onclick: () => go(page + 1) }, 'Older ›');
  const refresh = h('button', { class: 'btn ghost', type: 'button', onclick: (ev) => busy(ev.currentTarget, 'Refreshing…', refreshAll) }, 'Refresh');
  pager = { prev, next };
  dialog = captureDialog();
  fill(root,
    h('div', { class: 'page-head' },
      h('h1', { id: 'title-activity' }, 'Activity'),
      h('div', { class: 'page-actions' }, refresh)),
    statsBox,
    h('section', { 'aria-labelledby': 'inflight-title' },
      h('h2', { id: 'inflight-title' }, 'In flight'),
      h('div', { class: 'table-wrap' },
        h('table', { class: 'table', id: 'inflight-table' },
          h('thead', {}, h('tr', {},
            ['', 'Elapsed', 'Model', 'Request', 'Client', 'Session', 'Received'].map((c, i) =>
              h('th', { scope: 'col' }, i === 0 ? h('span', { class: 'sr-only' }, 'Cancel') : c)))),
          inflightBody)),
      inflightEmpty),
    h('section', { 'aria-labelledby': 'recent-title' },
      h('div', { class: 'section-head' },
        h('h2', { id: 'recent-title' }, 'Recent requests'),
        h('div', { class: 'pager' }, prev, pageInfo, next)),
      h('div', { class: 'table-wrap' },
        h('table', { class: 'table', id: 'activity-table' },
          h('thead', {}, h('tr', {},
            ['ID', 'Time', 'Model', 'Path', 'Status', 'Prompt', 'Generated', 'Cached', 'Prefill tok/s', 'Decode tok/s', 'Duration', 'Capture']
              .map((c) => h('th', { scope: 'col' }, c)))),
          activityBody)),
      activityEmpty),
    dialog);
  bus.on('inflight', renderInflight);
  bus.on('activity', debounce(() => { if (visible) refreshAll(); else stale = true; }, 250));
  renderInflight();
}

export function show() {
  visible = true;
  if (stale) refreshAll();
  clearInterval(ticker);
  ticker = setInterval(tickElapsed, 500);
}

export function hide() {
  visible = false;
  clearInterval(ticker);
}

async function refreshAll() {
  stale = false;
  await Promise.all([loadActivity(), loadStats()]);
}

function go(n) {
  if (n < 1 || n > totalPages) return;
  page = n;
  loadActivity();
}

// -- in flight ------------------------------------------------------------------

function elapsedOf(id, entry) {
  const seen = store.inflightAt.get(id);
  return (entry.elapsed_ms || 0) + (seen ? performance.now() - seen : 0);
}

function sessionOf(entry) {
  const names = store.uiConfig?.activity?.session_id || ['X-Session-ID'];
  const headers = entry.req_headers || {};
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  for (const name of names) {
    const v = lower[name.toLowerCase()];
    if (v) return v;
  }
  return '';
}

const inflightRows = new Map(); // id -> { tr, cells }

function renderInflight() {
  if (!inflightBody) return;
  const ids = [...store.inflight.keys()].sort((a, b) => Number(a) - Number(b));
  inflightEmpty.hidden = ids.length > 0;
  inflightBody.closest('.table-wrap').hidden = ids.length === 0;
  for (const [id, row] of inflightRows) {
    if (!store.inflight.has(id)) { row.tr.remove(); inflightRows.delete(id); }
  }
  ids.forEach((id, i) => {
    const r = store.inflight.get(id);
    let row = inflightRows.get(id);
    if (!row) {
      row = inflightRow(id, r);
      inflightRows.set(id, row);
    }
    const ua = (r.req_headers || {})['User-Agent'] || (r.req_headers || {})['user-agent'] || '';
    row.elapsed.textContent = fmtDuration(elapsedOf(id, r));
    fill(row.client, r.remote_ip || '', ua ? h('div', { class: 'muted truncate', title: ua }, ua) : null);
    row.session.textContent = sessionOf(r);
    row.bytes.textContent = fmtBytes(r.resp_bytes ?? 0);
    if (inflightBody.children[i] !== row.tr) inflightBody.insertBefore(row.tr, inflightBody.children[i] || null);
  });
}

function inflightRow(id, r) {
  const cancel = h('button', {
    class: 'btn danger small', type: 'button', 'aria-label': `Cancel request ${id} to ${r.model}`,
    onclick: (ev) => busy(ev.currentTarget, 'Cancelling…', async () => {
      try {
        await request(`/api/inflight/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
        toast(`Request ${id} cancelled`);
      } catch (err) {
        toast(`Could not cancel request ${id}: ${err.message}`, 'error');
      }
    }),
  }, 'Cancel');
  const elapsed = h('td', { class: 'num elapsed', dataset: { id } });
  const client = h('td', { class: 'small' });
  const session = h('td', { class: 'small' });
  const bytes = h('td', { class: 'num' });
  const tr = h('tr', { dataset: { id } },
    h('td', {}, cancel), elapsed, h('td', {}, r.model),
    h('td', {}, h('code', {}, `${r.method || ''} ${r.req_path || ''}`)),
    client, session, bytes);
  return { tr, elapsed, client, session, bytes };
}

function tickElapsed() {
  for (const cell of inflightBody.querySelectorAll('td.elapsed')) {
    const entry = store.inflight.get(cell.dataset.id);
    if (entry) cell.textContent = fmtDuration(elapsedOf(cell.dataset.id, entry));
  }
}

// -- stats ------------------------------------------------------------------------

async function loadStats() {
  try {
    const s = await getJSON('/api/metrics/stats');
    const p = s.prompt_histogram;
    const g = s.gen_histogram;
    fill(statsBox,
      card('Requests', fmtNum(s.total_requests)),
      card('Prompt tokens', fmtNum(s.total_input_tokens)),
      card('Generated tokens', fmtNum(s.total_output_tokens)),
      card('Cached tokens', fmtNum(s.total_cache_tokens)),
      card('Prefill p50 / p95 (tok/s)', p ? `${fmtNum(p.p50, 1)} / ${fmtNum(p.p95, 1)}` : '–'),
      card('Decode p50 / p95 (tok/s)', g ? `${fmtNum(g.p50, 1)} / ${fmtNum(g.p95, 1)}` : '–'));
  } catch (err) {
    fill(statsBox, h('p', { class: 'muted small' }, `Totals unavailable (${err.message}).`));
  }
}

function card(label, value) {
  return h('div', { class: 'stat-card' }, h('span', { class: 'stat-label' }, label), h('span', { class: 'stat-value' }, value));
}

// -- recent requests --------------------------------------------------------------

async function loadActivity() {
  try {
    const res = await getJSON(`/api/metrics/activity?limit=${LIMIT}&page=${page}&sort=id&order=desc`);
    totalPages = Math.max(1, res.total_pages || 1);
    if (page > totalPages) { page = totalPages; return loadActivity(); }
    pageInfo.textContent = `page ${page} of ${totalPages} · ${fmtNum(res.total)} requests`;
    pager.prev.disabled = page <= 1;
    pager.next.disabled = page >= totalPages;
    const rows = res.data || [];
    activityEmpty.hidden = rows.length > 0;
    fill(activityBody, rows.map(activityRow));
  } catch (err) {
    activityEmpty.hidden = false;
    activityEmpty.textContent = `Activity unavailable (${err.message}).`;
    fill(activityBody);
  }
}

function speed(v) {
  return v > 0 ? fmtNum(v, 1) : '–';
}

function activityRow(r) {
  const t = r.tokens || {};
  const ok = r.resp_status_code >= 200 && r.resp_status_code < 400;
  const status = h('span', { class: ['status-code', ok ? 'ok' : 'bad'], title: r.error_msg || '' },
    String(r.resp_status_code), ok ? '' : ' ✕');
  const capture = r.has_capture
    ? h('button', { class: 'btn ghost small', type: 'button', 'aria-label': `View capture of request ${r.id}`, onclick: () => openCapture(r.id) }, 'View')
    : h('span', { class: 'muted' }, '–');
  return h('tr', { dataset: { id: r.id } },
    h('td', { class: 'num' }, String(r.id)),
    h('td', { class: 'small nowrap', title: String(r.timestamp) }, fmtTime(r.timestamp)),
    h('td', {}, r.model),
    h('td', {}, h('code', {}, r.req_path), r.error_msg ? h('div', { class: 'error-text small truncate', title: r.error_msg }, r.error_msg) : null),
    h('td', {}, status),
    h('td', { class: 'num' }, fmtNum(t.input_tokens)),
    h('td', { class: 'num' }, fmtNum(t.output_tokens)),
    h('td', { class: 'num' }, fmtNum(t.cache_tokens)),
    h('td', { class: 'num' }, speed(t.prompt_per_second)),
    h('td', { class: 'num' }, speed(t.tokens_per_second)),
    h('td', { class: 'num' }, fmtDuration(r.duration_ms)),
    h('td', {}, capture));
}

// -- capture viewer ------------------------------------------------------------------

let dialogBody, dialogTitle;

function captureDialog() {
  dialogTitle = h('h2', { id: 'capture-title' }, 'Capture');
  dialogBody = h('div', { class: 'capture-body' });
  const close = h('button', { class: 'btn ghost', type: 'button', 'aria-label': 'Close capture', onclick: () => dialog.close() }, 'Close');
  const d = h('dialog', { class: 'dialog', id: 'capture-dialog', 'aria-labelledby': 'capture-title' },
    h('div', { class: 'dialog-head' }, dialogTitle, close), dialogBody);
  d.addEventListener('click', (ev) => { if (ev.target === d) d.close(); });
  return d;
}

async function openCapture(id) {
  dialogTitle.textContent = `Capture of request ${id}`;
  fill(dialogBody, h('p', { class: 'muted' }, 'Loading…'));
  if (!dialog.open) dialog.showModal();
  try {
    const c = await getJSON(`/api/captures/${encodeURIComponent(id)}`);
    fill(dialogBody,
      h('p', {}, h('code', {}, c.req_path || '')),
      part('Request headers', headerText(c.req_headers)),
      bodyPart('Request body', c.req_body, contentType(c.req_headers)),
      part('Response headers', headerText(c.resp_headers)),
      bodyPart('Response body', c.resp_body, contentType(c.resp_headers)));
  } catch (err) {
    fill(dialogBody, h('p', { class: 'error-text', role: 'alert' }, `Could not load the capture: ${err.message}`));
  }
}

function contentType(headers) {
  for (const [k, v] of Object.entries(headers || {})) if (k.toLowerCase() === 'content-type') return v;
  return '';
}

function headerText(headers) {
  if (!headers) return null;
  return Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\n');
}

function decode(b64) {
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return { bytes, text: new TextDecoder().decode(bytes) };
}

function bodyPart(label, b64, type) {
  if (b64 === null || b64 === undefined) return part(label, null);
  let decoded;
  try { decoded = decode(b64); } catch { return part(label, b64); }
  if (type.startsWith('image/')) {
    return h('section', { class: 'capture-part' }, h('h3', {}, label),
      h('img', { src: `data:${type};base64,${b64}`, alt: `${label} (${type})`, class: 'capture-img' }));
  }
  if (type.startsWith('audio/')) {
    return h('section', { class: 'capture-part' }, h('h3', {}, label),
      h('audio', { controls: true, src: `data:${type};base64,${b64}` }));
  }
  let text = decoded.text;
  try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* SSE or text: shown as is */ }
  return part(label, text);
}

function part(label, text) {
  const pre = h('pre', { class: 'code' }, text === null ? 'not captured' : text || '(empty)');
  const copy = text ? h('button', {
    class: 'btn ghost small', type: 'button', 'aria-label': `Copy ${label.toLowerCase()}`,
    onclick: async (ev) => {
      try { await navigator.clipboard.writeText(text); ev.currentTarget.textContent = 'Copied'; } catch { toast('Copy failed', 'error'); }
    },
  }, 'Copy') : null;
  return h('section', { class: 'capture-part' }, h('div', { class: 'section-head' }, h('h3', {}, label), copy), pre);
}
