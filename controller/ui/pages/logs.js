// Logs: proxy and upstream live from the event stream (logData), a model's own
// log live from GET /logs/stream/<id> (fetch + ReadableStream). Regex filter
// (case-insensitive), auto-scroll and wrap toggles.

import { h, fill, modelPath, perFrame, stripAnsi, capText, load, save, errorText } from '../lib.js';
import { bus, store, LOG_LIMIT } from '../state.js';

export const title = 'Logs';

let sourceSelect, filterInput, filterError, autoScroll, wrap, panelsBox;
let panels = {};
let filter = null;
let modelStream = null; // { id, controller }
let modelText = '';
let modelStatus = '';
let visible = false;

class Panel {
  constructor(key, label) {
    this.key = key;
    this.count = h('span', { class: 'muted small log-count' });
    this.status = h('span', { class: 'muted small log-status' });
    this.pre = h('pre', {
      class: 'log', id: `log-${key}`, tabindex: '0', role: 'log', 'aria-live': 'off',
      'aria-label': `${label} log`,
    });
    this.title = h('h2', { class: 'log-title' }, label);
    this.el = h('section', { class: 'log-panel', dataset: { source: key } },
      h('header', { class: 'log-head' }, this.title, this.status, this.count),
      this.pre);
    this.schedule = perFrame(() => this.render());
  }

  text() {
    if (this.key === 'model') return modelText;
    return store.logs[this.key];
  }

  render() {
    if (!visible || this.el.hidden) return;
    const lines = stripAnsi(this.text()).split('\n');
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    const shown = filter ? lines.filter((l) => filter.test(l)) : lines;
    this.pre.replaceChildren(highlight(shown));
    const plural = (n) => `${n} line${n === 1 ? '' : 's'}`;
    this.count.textContent = filter ? `${shown.length} of ${plural(lines.length)}` : plural(lines.length);
    if (autoScroll.checked) this.pre.scrollTop = this.pre.scrollHeight;
  }
}

const LEVEL = /\[(WARN|WARNING|ERROR|CRITICAL)\]|\b(ERROR|FATAL|Traceback)\b/;

/** The lines as text nodes, warnings and errors in coloured spans. */
function highlight(lines) {
  const frag = document.createDocumentFragment();
  let plain = '';
  for (const line of lines) {
    const m = LEVEL.exec(line);
    if (!m) { plain += line + '\n'; continue; }
    if (plain) frag.append(plain);
    plain = '';
    const level = (m[1] || m[2]).startsWith('WARN') ? 'warn' : 'error';
    frag.append(h('span', { class: `lvl-${level}` }, line), '\n');
  }
  if (plain) frag.append(plain);
  return frag;
}

export function mount(root) {
  sourceSelect = h('select', { id: 'log-source', onchange: onSource });
  filterInput = h('input', {
    type: 'search', id: 'log-filter', placeholder: 'regex, e.g. error|warn', autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'log-filter-error',
    oninput: onFilter,
  });
  filterError = h('span', { id: 'log-filter-error', class: 'field-error', role: 'status' });
  autoScroll = h('input', {
    type: 'checkbox', id: 'log-autoscroll', checked: load('logs.autoScroll', true),
    onchange: () => { save('logs.autoScroll', autoScroll.checked); renderAll(); },
  });
  wrap = h('input', {
    type: 'checkbox', id: 'log-wrap', checked: load('logs.wrap', true),
    onchange: () => { save('logs.wrap', wrap.checked); applyWrap(); },
  });
  const clear = h('button', { class: 'btn ghost', type: 'button', onclick: onClear }, 'Clear');
  panels = {
    proxy: new Panel('proxy', 'Proxy'),
    upstream: new Panel('upstream', 'Upstream'),
    model: new Panel('model', 'Model'),
  };
  panelsBox = h('div', { class: 'log-panels' }, panels.proxy.el, panels.upstream.el, panels.model.el);
  fill(root,
    h('div', { class: 'page-head' }, h('h1', { id: 'title-logs' }, 'Logs')),
    h('div', { class: 'toolbar log-toolbar', role: 'group', 'aria-label': 'Log options' },
      h('label', { class: 'field' }, h('span', {}, 'Source'), sourceSelect),
      h('label', { class: 'field grow' }, h('span', {}, 'Filter'), filterInput, filterError),
      h('label', { class: 'check' }, autoScroll, ' Auto-scroll'),
      h('label', { class: 'check' }, wrap, ' Wrap'),
      clear),
    panelsBox);
  fillSources();
  bus.on('models', fillSources);
  bus.on('log', ({ source }) => panels[source]?.schedule());
  bus.on('logs-reset', renderAll);
  applyWrap();
}

export function show(params) {
  visible = true;
  const model = params?.get('model');
  if (model) {
    fillSources(model);
    sourceSelect.value = `model:${model}`;
  }
  onSource();
}

export function hide() {
  visible = false;
  stopModelStream();
}

let sourcesKey = '';

function fillSources(wanted) {
  const prev = typeof wanted === 'string' ? `model:${wanted}` : sourceSelect.value || load('logs.source', 'both');
  const ids = store.models.filter((m) => !m.peerID).map((m) => m.id);
  if (typeof wanted === 'string' && !ids.includes(wanted)) ids.push(wanted);
  const key = ids.join('\n');
  if (key !== sourcesKey || !sourceSelect.options.length) {
    // rebuilt only when the model list changes (not on every state change,
    // which would close an open dropdown)
    sourcesKey = key;
    fill(sourceSelect,
      h('option', { value: 'both' }, 'Proxy + upstream'),
      h('option', { value: 'proxy' }, 'Proxy'),
      h('option', { value: 'upstream' }, 'Upstream'),
      ids.length ? h('optgroup', { label: 'Model' }, ids.map((id) => h('option', { value: `model:${id}` }, id))) : null);
  }
  sourceSelect.value = prev;
  if (!sourceSelect.value) sourceSelect.value = 'both';
}

function onSource() {
  const value = sourceSelect.value || 'both';
  save('logs.source', value.startsWith('model:') ? 'both' : value);
  panels.proxy.el.hidden = !(value === 'both' || value === 'proxy');
  panels.upstream.el.hidden = !(value === 'both' || value === 'upstream');
  panels.model.el.hidden = !value.startsWith('model:');
  panelsBox.dataset.layout = value === 'both' ? 'split' : 'single';
  if (value.startsWith('model:')) startModelStream(value.slice(6));
  else stopModelStream();
  renderAll();
}

function onFilter() {
  const text = filterInput.value.trim();
  filterInput.removeAttribute('aria-invalid');
  filterError.textContent = '';
  if (!text) {
    filter = null;
  } else {
    try {
      filter = new RegExp(text, 'i');
    } catch {
      filterInput.setAttribute('aria-invalid', 'true');
      filterError.textContent = 'invalid regex';
      return;
    }
  }
  renderAll();
}

function onClear() {
  const value = sourceSelect.value;
  if (value.startsWith('model:')) modelText = '';
  else {
    if (value !== 'upstream') store.logs.proxy = '';
    if (value !== 'proxy') store.logs.upstream = '';
  }
  renderAll();
}

function applyWrap() {
  panelsBox.classList.toggle('nowrap', !wrap.checked);
}

function renderAll() {
  for (const p of Object.values(panels)) p.render();
}

function stopModelStream() {
  if (modelStream) modelStream.controller.abort();
  modelStream = null;
}

function setModelStatus(text) {
  modelStatus = text;
  panels.model.status.textContent = modelStatus;
}

async function startModelStream(id) {
  if (modelStream?.id === id) return;
  stopModelStream();
  const controller = new AbortController();
  modelStream = { id, controller };
  modelText = '';
  panels.model.title.textContent = `Model: ${id}`;
  panels.model.pre.setAttribute('aria-label', `Log of model ${id}`);
  let delay = 1000;
  while (!controller.signal.aborted) {
    try {
      setModelStatus('connecting…');
      const resp = await fetch(`/logs/stream/${modelPath(id)}`, {
        credentials: 'same-origin', signal: controller.signal,
      });
      if (!resp.ok) {
        setModelStatus(await errorText(resp));
        if (resp.status === 400 || resp.status === 404) {
          if (modelStream?.controller === controller) modelStream = null;
          return;
        }
        throw new Error(String(resp.status));
      }
      modelText = ''; // the stream starts with the whole history
      setModelStatus('live');
      delay = 1000;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        modelText = capText(modelText + decoder.decode(value, { stream: true }), LOG_LIMIT);
        panels.model.schedule();
      }
      setModelStatus('stream ended – reconnecting…');
    } catch (err) {
      if (controller.signal.aborted) return;
      setModelStatus(`disconnected – retrying (${err.message})`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}
