// Small helpers shared by every page: DOM building, fetch, formatting, SSE.

/** Build an element: h('button', {class: 'btn', onclick: fn}, 'Label'). */
export function h(tag, props, ...children) {
  const ns = SVG_TAGS.has(tag) ? 'http://www.w3.org/2000/svg' : null;
  const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'text') {
      el.textContent = value;
    } else if (!ns && (key === 'value' || key === 'checked' || key === 'selected')) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(['svg', 'g', 'path', 'polyline', 'line', 'rect', 'text', 'circle', 'title']);

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Tiny event emitter for the shared store. */
export class Emitter {
  constructor() { this.handlers = new Map(); }
  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, new Set());
    this.handlers.get(name).add(fn);
    return () => this.handlers.get(name).delete(fn);
  }
  emit(name, data) {
    for (const fn of this.handlers.get(name) || []) {
      try { fn(data); } catch (err) { console.error(err); }
    }
  }
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** The message of an error response: swapvisor's JSON envelope, or its text. */
export async function errorText(resp) {
  const text = await resp.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    const msg = body?.error?.message ?? body?.error ?? body?.message ?? body?.detail;
    if (typeof msg === 'string' && msg) return `${resp.status}: ${msg}`;
  } catch { /* not JSON */ }
  return `${resp.status} ${resp.statusText}${text ? ': ' + text.slice(0, 300) : ''}`;
}

/** fetch() that throws ApiError on a non-2xx answer. Same-origin credentials
 * (the browser's Basic auth) ride along automatically. */
export async function request(path, opts = {}) {
  const resp = await fetch(path, { credentials: 'same-origin', ...opts });
  if (!resp.ok) throw new ApiError(resp.status, await errorText(resp));
  return resp;
}

export async function getJSON(path, opts) {
  return (await request(path, opts)).json();
}

export async function postJSON(path, body, opts = {}) {
  return request(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(opts.headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
    ...opts,
  });
}

/** A model id in a URL path: each segment escaped, slashes kept. */
export function modelPath(id) {
  return String(id).split('/').map(encodeURIComponent).join('/');
}

/** Read a text/event-stream body: yields {event, data} per event. */
export async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r?\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === '\r' ? 2 : 1));
        if (line === '') {
          if (data.length) yield { event, data: data.join('\n') };
          event = 'message';
          data = [];
        } else if (line.startsWith(':')) {
          continue;
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'data') data.push(value);
          else if (field === 'event') event = value;
        }
      }
    }
    buf += decoder.decode();
    const rest = buf.trim();
    if (rest.startsWith('data:')) data.push(rest.slice(5).trim());
    else if (rest) yield { event: 'raw', data: rest };
    if (data.length) yield { event, data: data.join('\n') };
  } finally {
    reader.releaseLock();
  }
}

// -- formatting --------------------------------------------------------------

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0 || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || n < 0) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || n < 0 || !Number.isFinite(n)) return '–';
  return n.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtTime(ts) {
  const d = ts instanceof Date ? ts : new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts ?? '');
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// -- model states --------------------------------------------------------------

const STATES = {
  ready: 'ok', starting: 'busy', stopping: 'busy', stopped: 'idle',
  sleeping: 'asleep', failed: 'bad', shutdown: 'bad', peer: 'idle',
};

/** A coloured dot plus the state's word: readable by colour and by text. */
export function stateBadge(state) {
  const word = state || 'unknown';
  return h('span', { class: ['state', `state-${STATES[word] || 'idle'}`], dataset: { state: word } },
    h('span', { class: 'dot', 'aria-hidden': 'true' }),
    h('span', { class: 'state-text' }, word));
}

export function updateStateBadge(el, state) {
  const word = state || 'unknown';
  el.className = `state state-${STATES[word] || 'idle'}`;
  el.dataset.state = word;
  el.querySelector('.state-text').textContent = word;
}

// -- misc ------------------------------------------------------------------------

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Run fn at most once per animation frame. */
export function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

/** Set a button busy (disabled, aria-busy, spinner text) while promise runs. */
export async function busy(button, label, work) {
  const old = button.textContent;
  const wasDisabled = button.disabled;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.classList.add('pending');
  if (label) button.textContent = label;
  try {
    return await work();
  } finally {
    button.disabled = wasDisabled;
    button.removeAttribute('aria-busy');
    button.classList.remove('pending');
    if (label) button.textContent = old;
  }
}

const STRIP_ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;
export const stripAnsi = (s) => s.replace(STRIP_ANSI, '');

/** Keep at most `limit` characters, cut at a line start. */
export function capText(text, limit) {
  if (text.length <= limit) return text;
  const cut = text.length - limit;
  const nl = text.indexOf('\n', cut);
  return nl >= 0 ? text.slice(nl + 1) : text.slice(cut);
}

export function load(key, fallback) {
  try {
    const raw = localStorage.getItem(`swapvisor.${key}`);
    return raw === null ? fallback : JSON.parse(raw);
  } catch { return fallback; }
}

export function save(key, value) {
  try { localStorage.setItem(`swapvisor.${key}`, JSON.stringify(value)); } catch { /* private mode */ }
}

/** Show a transient message in the toast area (role=status). */
export function toast(message, kind = 'info') {
  const area = document.getElementById('toasts');
  if (!area) return;
  const item = h('div', { class: ['toast', `toast-${kind}`], role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message),
    h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Dismiss', onclick: () => item.remove() }, '×'));
  area.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 4000);
}

let uid = 0;
export const nextId = (prefix) => `${prefix}-${++uid}`;
