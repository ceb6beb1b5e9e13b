// Models: live state of every model (modelStatus events), load / unload per
// model, Unload all, and a link to each upstream's own UI. From /api/explain
// (fetched on show and on each modelStatus / inflight event, at most once a
// second): the last decision and waiting reason per model, and under
// `use: resources` each model's memory facts and the memory budget.

import {
  h, fill, request, getJSON, modelPath, stateBadge, updateStateBadge, fmtDuration,
  fmtBytes, fmtTime, load, save, toast,
} from '../lib.js';
import { bus, store } from '../state.js';

export const title = 'Models';

// model id -> { kind: 'load'|'unload', since, controller }
const pending = new Map();
const errors = new Map();
const cards = new Map();
let list, peersBox, peersList, readyCount, unloadAll, showUnlisted, emptyNote;
let ticker = null;

// /api/explain: the last answer, by model id; refreshed at most once a second
const EXPLAIN_GAP_MS = 1000;
const UNMEASURED_TRIES = 15;  // 1 s follow-ups for a measurement, then 5 s
let explain = null;
const explained = new Map();
let budgetBox, budgetCards;
let visible = false;
let explainTimer = null, followTimer = null;
let explainBusy = false, explainAgain = false, explainLast = -Infinity;
let unmeasuredTries = 0;

export function mount(root) {
  readyCount = h('p', { class: 'muted', id: 'ready-count', role: 'status' }, 'Loading model list…');
  showUnlisted = h('input', {
    type: 'checkbox', id: 'show-unlisted', checked: load('models.showUnlisted', false),
    onchange: () => { save('models.showUnlisted', showUnlisted.checked); render(); },
  });
  unloadAll = h('button', { class: 'btn danger', type: 'button', id: 'unload-all', onclick: onUnloadAll }, 'Unload all');
  list = h('ul', { class: 'model-list', id: 'model-list', 'aria-label': 'Local models' });
  emptyNote = h('p', { class: 'empty', hidden: true }, 'No models configured.');
  peersList = h('ul', { class: 'model-list peers', 'aria-label': 'Peer models' });
  peersBox = h('section', { class: 'peers-box', hidden: true, 'aria-labelledby': 'peers-title' },
    h('h2', { id: 'peers-title' }, 'Peers'),
    h('p', { class: 'muted small' }, 'Models served by other machines. Requests are forwarded; nothing is loaded here.'),
    peersList);
  budgetCards = h('div', { class: 'stat-cards budget-cards' });
  budgetBox = h('section', { class: 'budget-box', id: 'memory-budget', hidden: true, 'aria-labelledby': 'budget-title' },
    h('h2', { id: 'budget-title' }, 'Memory budget'),
    budgetCards);
  fill(root,
    h('div', { class: 'page-head' },
      h('div', {},
        h('h1', { id: 'title-models' }, 'Models'),
        readyCount),
      h('div', { class: 'page-actions' },
        h('label', { class: 'check' }, showUnlisted, ' Show unlisted'),
        unloadAll)),
    budgetBox, list, emptyNote, peersBox);
  bus.on('models', render);
  bus.on('models', requestExplain);
  // a queued request (waiting reason) shows up as an inflight event first
  bus.on('inflight', requestExplain);
  render();
}

export function show() {
  clearInterval(ticker);
  ticker = setInterval(tick, 500);
  visible = true;
  requestExplain();
}

export function hide() {
  clearInterval(ticker);
  ticker = null;
  visible = false;
  clearTimeout(explainTimer);
  clearTimeout(followTimer);
  explainTimer = followTimer = null;
}

// -- /api/explain --------------------------------------------------------------------

/** Fetch /api/explain soon: at once, or 1 s after the previous fetch began. */
function requestExplain() {
  if (!visible) return;  // fetched again on show
  if (explainBusy) {
    explainAgain = true;
    return;
  }
  if (explainTimer) return;
  clearTimeout(followTimer);
  followTimer = null;
  const wait = Math.max(0, explainLast + EXPLAIN_GAP_MS - performance.now());
  explainTimer = setTimeout(fetchExplain, wait);
}

async function fetchExplain() {
  explainTimer = null;
  if (!visible) return;
  explainBusy = true;
  explainLast = performance.now();
  let ok = false;
  try {
    setExplain(await getJSON('/api/explain'));
    ok = true;
  } catch { /* a blip, or a server without it: keep the last answer */ }
  explainBusy = false;
  if (explainAgain) {
    explainAgain = false;
    requestExplain();
  } else if (ok) {
    followUp();
  }
}

/** Facts that change without a model event: a waiting reason (1 s), a
 * measurement taken shortly after a model got ready (1 s, a few times), free
 * memory under `use: resources` (5 s). */
function followUp() {
  clearTimeout(followTimer);
  followTimer = null;
  if (!visible || !explain) return;
  const models = explain.models || [];
  const unmeasured = explain.engine === 'resources'
    && models.some((m) => (m.state === 'ready' || m.state === 'sleeping') && !m.measured);
  unmeasuredTries = unmeasured ? unmeasuredTries + 1 : 0;
  let wait = 0;
  if (models.some((m) => m.waiting) || (unmeasured && unmeasuredTries <= UNMEASURED_TRIES)) wait = 1000;
  else if (explain.budget) wait = 5000;
  if (wait) followTimer = setTimeout(requestExplain, wait);
}

function setExplain(data) {
  explain = data && typeof data === 'object' ? data : null;
  explained.clear();
  for (const m of explain?.models || []) explained.set(m.id, m);
  renderBudget();
  for (const card of cards.values()) {
    renderTags(card);
    renderFacts(card);
  }
}

/** "9.5 GiB", "800 MiB", "2 GiB": lib's fmtBytes without a trailing ".0". */
function fmtMem(n) {
  return fmtBytes(n).replace(/\.0 /, ' ');
}

function hasGpus() {
  return Boolean(explain?.budget?.gpus?.length);
}

/** "9.5 GiB VRAM, 800 MiB RAM"; null when neither is known. */
function needText(need) {
  if (!need) return null;
  const parts = [];
  if (need.vram !== null && need.vram !== undefined && (need.vram > 0 || hasGpus())) parts.push(`${fmtMem(need.vram)} VRAM`);
  if (need.ram !== null && need.ram !== undefined) parts.push(`${fmtMem(need.ram)} RAM`);
  return parts.length ? parts.join(', ') : null;
}

function gpuList(indexes) {
  return indexes.map((i) => `GPU ${i}`).join(', ');
}

function fact(key, label, ...value) {
  return h('div', { class: ['fact', `fact-${key}`], dataset: { fact: key } },
    h('dt', {}, label),
    h('dd', {}, ...value));
}

function renderFacts(card) {
  const e = explained.get(card.model.id);
  const rows = [];
  if (e && explain?.engine === 'resources') {
    const needs = e.needs;
    if (needs) {
      const known = [
        needs.declared && needText(needs.declared) ? `declared ${needText(needs.declared)}` : null,
        needs.learned && needText(needs.learned) ? `learned ${needText(needs.learned)}` : null,
      ].filter(Boolean);
      rows.push(fact('needs', 'Needs',
        needText(needs.estimate) || 'not known yet: the first load runs alone to learn them',
        known.length ? h('span', { class: 'muted' }, ` (${known.join(' · ')})`) : null));
    }
    const m = e.measured;
    if (m) {
      const parts = [];
      if (m.ram !== null && m.ram !== undefined) parts.push(`RAM ${fmtMem(m.ram)}`);
      for (const [i, b] of Object.entries(m.vram || {}).sort((x, y) => Number(x[0]) - Number(y[0]))) {
        parts.push(`GPU ${i} ${fmtMem(b)}`);
      }
      const gone = ['stopped', 'failed', 'shutdown'].includes(card.model.state);
      if (parts.length) rows.push(fact('measured', gone ? 'Last measured' : 'Measured', parts.join(' · ')));
    }
    const placed = Array.isArray(e.placement) ? e.placement : null;
    const pinned = Array.isArray(e.pinned) && e.pinned.length ? e.pinned : null;
    if ((placed && (placed.length || hasGpus())) || pinned) {
      const where = !placed ? null
        : placed.length
          ? placed.map((i) => {
            const held = e.holds?.vram?.[String(i)];
            return held ? `GPU ${i} (${fmtMem(held)})` : `GPU ${i}`;
          }).join(', ')
          : 'host RAM only';
      rows.push(fact('placement', 'Placement',
        [where, pinned ? `pinned to ${gpuList(pinned)}` : null].filter(Boolean).join(' · ')));
    }
  }
  if (e?.decision?.text) {
    const at = e.decision.at;
    rows.push(fact('decision', 'Last decision',
      at ? h('time', { datetime: at, title: at }, fmtTime(at)) : null,
      e.decision.text));
  }
  if (e?.waiting) rows.push(fact('waiting', 'Waiting', e.waiting));
  fill(card.facts, rows);
  card.facts.hidden = rows.length === 0;
}

function renderBudget() {
  const budget = explain?.budget;
  budgetBox.hidden = !budget;
  if (!budget) {
    budgetCards.replaceChildren();
    return;
  }
  const items = [];
  if (budget.ram) {
    const r = budget.ram;
    items.push(budgetCard('ram', 'RAM', r.planned, r.capacity, r.available, r.reserve));
  }
  for (const g of budget.gpus || []) {
    items.push(budgetCard(`gpu-${g.index}`, `GPU ${g.index}`, g.planned, g.capacity, g.free, g.reserve));
  }
  fill(budgetCards, items);
}

function budgetCard(key, label, planned, capacity, free, reserve) {
  const known = capacity !== null && capacity !== undefined && capacity > 0;
  const pct = known ? Math.min(100, Math.max(0, (planned / capacity) * 100)) : 0;
  const bar = h('span', { class: 'budget-fill' });
  bar.style.width = `${pct.toFixed(1)}%`;
  const summary = `${fmtMem(planned)} of ${fmtMem(capacity)} planned`;
  return h('div', { class: ['stat-card', 'budget-card', known && planned > capacity && 'over'], dataset: { device: key } },
    h('span', { class: 'stat-label' }, label),
    h('span', { class: 'stat-value budget-planned' }, summary),
    h('span', {
      class: 'budget-bar', role: 'meter', 'aria-label': `${label} planned`,
      'aria-valuemin': 0, 'aria-valuemax': known ? capacity : 0, 'aria-valuenow': known ? Math.min(planned, capacity) : 0,
      'aria-valuetext': summary,
    }, bar),
    h('span', { class: 'muted small budget-free' },
      `free now ${free === null || free === undefined ? 'unknown' : fmtMem(free)}`
      + (reserve ? ` · ${fmtMem(reserve)} kept in reserve` : '')));
}

function localModels() {
  return store.models.filter((m) => !m.peerID);
}

function render() {
  if (!list) return;
  const locals = localModels();
  const visible = locals.filter((m) => showUnlisted.checked || !m.unlisted);
  const ready = locals.filter((m) => m.state === 'ready').length;
  readyCount.textContent = store.modelsKnown
    ? `${ready} of ${locals.length} ready${locals.length !== visible.length ? ` · ${locals.length - visible.length} unlisted hidden` : ''}`
    : 'Loading model list…';
  emptyNote.hidden = !store.modelsKnown || visible.length > 0;
  const seen = new Set();
  visible.forEach((model, i) => {
    seen.add(model.id);
    let card = cards.get(model.id);
    if (!card) {
      card = buildCard(model);
      cards.set(model.id, card);
    }
    updateCard(card, model);
    if (list.children[i] !== card.el) list.insertBefore(card.el, list.children[i] || null);
  });
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.el.remove();
      cards.delete(id);
    }
  }
  const peers = store.models.filter((m) => m.peerID);
  peersBox.hidden = peers.length === 0;
  fill(peersList, peers.map((p) => h('li', { class: 'model-card peer', dataset: { model: p.id } },
    h('div', { class: 'model-main' },
      stateBadge('peer'),
      h('div', { class: 'model-titles' },
        h('h3', { class: 'model-name' }, p.id),
        h('span', { class: 'muted small' }, `via ${p.peerID}`))))));
  unloadAll.disabled = !locals.some((m) => m.state !== 'stopped' && m.state !== 'failed') && !unloadAll.classList.contains('pending');
}

function buildCard(model) {
  const badge = stateBadge(model.state);
  const elapsed = h('span', { class: 'elapsed muted small', 'aria-live': 'off' });
  const name = h('h3', { class: 'model-name' });
  const idLine = h('p', { class: 'model-id' });
  const desc = h('p', { class: 'model-desc muted' });
  const tags = h('p', { class: 'tags' });
  const facts = h('dl', { class: 'model-facts', hidden: true });
  const error = h('p', { class: 'card-error', role: 'alert', hidden: true });
  const action = h('button', { class: 'btn primary action', type: 'button' });
  const open = h('a', {
    class: 'btn ghost', href: `/upstream/${modelPath(model.id)}/`, target: '_blank', rel: 'noopener',
  }, 'Open UI ↗');
  const logsLink = h('a', { class: 'btn ghost', href: `#/logs?model=${encodeURIComponent(model.id)}` }, 'Logs');
  const el = h('li', { class: 'model-card', dataset: { model: model.id } },
    h('div', { class: 'model-main' },
      h('div', { class: 'state-col' }, badge, elapsed),
      h('div', { class: 'model-titles' }, name, idLine, desc, tags, facts, error)),
    h('div', { class: 'model-actions' }, action, open, logsLink));
  const card = { el, badge, elapsed, name, idLine, desc, tags, facts, error, action, open, logsLink, model };
  action.addEventListener('click', () => onAction(card));
  return card;
}

function updateCard(card, model) {
  card.model = model;
  card.el.dataset.state = model.state;
  updateStateBadge(card.badge, model.state);
  const label = model.name || model.id;
  card.name.textContent = label;
  card.idLine.replaceChildren(
    ...(model.name ? [h('code', {}, model.id)] : []),
    ...(model.aliases?.length ? [h('span', { class: 'muted small' }, `${model.name ? ' · ' : ''}aliases: ${model.aliases.join(', ')}`)] : []));
  card.idLine.hidden = !model.name && !model.aliases?.length;
  card.desc.textContent = model.description || '';
  card.desc.hidden = !model.description;
  renderTags(card);
  renderFacts(card);
  card.open.setAttribute('aria-label', `Open ${label}'s own web UI in a new tab`);
  card.logsLink.setAttribute('aria-label', `Logs of ${label}`);
  const q = model.quarantine;
  card.el.dataset.quarantined = q ? 'true' : 'false';
  const quarantined = q
    ? `Quarantined after ${q.failures} failed starts, until ${new Date(q.until).toLocaleTimeString()}: ${q.reason}`
    : '';
  const err = errors.get(model.id) || quarantined;
  card.error.hidden = !err;
  card.error.textContent = err || '';
  updateAction(card);
}

function renderTags(card) {
  const { model } = card;
  const caps = Object.entries(model.capabilities || {}).filter(([, v]) => v).map(([k]) => k.replace(/_/g, ' '));
  const kept = explain?.engine === 'resources' && explained.get(model.id)?.protected;
  fill(card.tags,
    model.unlisted ? h('span', { class: 'tag' }, 'unlisted') : null,
    kept ? h('span', { class: 'tag kept', title: 'Never evicted to make room for another model (persistent group or pinned selector)' }, 'stays loaded') : null,
    caps.map((c) => h('span', { class: 'tag' }, c)),
    model.context_length ? h('span', { class: 'tag' }, `ctx ${model.context_length.toLocaleString()}`) : null,
    model.slots ? h('span', { class: 'tag slots', title: 'KV cache saved by keepSlots, restored on the next start' },
      `KV cache saved: ${model.slots.count} slot${model.slots.count === 1 ? '' : 's'}, ${model.slots.tokens.toLocaleString()} tokens, ${(model.slots.bytes / 1048576).toFixed(1)} MiB`) : null);
  card.tags.hidden = !card.tags.childElementCount;
}

function updateAction(card) {
  const { model, action } = card;
  const p = pending.get(model.id);
  const label = model.name || model.id;
  let text, aria, disabled = false, kind = 'primary';
  if (p?.kind === 'unload') {
    text = 'Unloading…'; aria = `Unloading ${label}`; disabled = true; kind = 'secondary';
  } else if (p?.kind === 'load' && ['stopped', 'starting', 'failed', 'sleeping'].includes(model.state)) {
    text = 'Cancel load'; aria = `Cancel loading ${label}`; kind = 'secondary';
  } else if (model.state === 'starting') {
    text = 'Stop'; aria = `Stop loading ${label}`; kind = 'secondary';
  } else if (model.state === 'ready') {
    text = 'Unload'; aria = `Unload ${label}`; kind = 'secondary';
  } else if (model.state === 'sleeping') {
    text = 'Wake'; aria = `Wake ${label} (asleep: its memory is released)`;
  } else if (model.state === 'stopping') {
    text = 'Stopping…'; aria = `${label} is stopping`; disabled = true; kind = 'secondary';
  } else {
    text = model.state === 'failed' ? 'Retry load' : 'Load'; aria = `Load ${label}`;
  }
  action.textContent = text;
  action.setAttribute('aria-label', aria);
  action.disabled = disabled;
  action.className = `btn ${kind} action`;
  action.classList.toggle('pending', Boolean(p));
  if (p) action.setAttribute('aria-busy', 'true');
  else action.removeAttribute('aria-busy');
  action.dataset.action = text.toLowerCase().replace(/[^a-z]+/g, '-').replace(/-$/, '');
  tickCard(card);
}

function tickCard(card) {
  const p = pending.get(card.model.id);
  const busyState = card.model.state === 'starting' || card.model.state === 'stopping';
  if (p && (p.kind === 'load' || busyState)) {
    card.elapsed.textContent = fmtDuration(performance.now() - p.since);
  } else {
    card.elapsed.textContent = '';
  }
}

function tick() {
  for (const card of cards.values()) tickCard(card);
}

function onAction(card) {
  const { model } = card;
  const p = pending.get(model.id);
  if (p?.kind === 'load') {
    p.controller.abort();
    unloadModel(model);
  } else if (model.state === 'stopped' || model.state === 'failed' || model.state === 'sleeping') {
    loadModel(model);
  } else if (model.state === 'starting' || model.state === 'ready') {
    unloadModel(model);
  }
}

/** Load = GET /upstream/<id>/ (as llama-swap's UI); abortable. */
async function loadModel(model) {
  const controller = new AbortController();
  pending.set(model.id, { kind: 'load', since: performance.now(), controller });
  errors.delete(model.id);
  render();
  try {
    const resp = await fetch(`/upstream/${modelPath(model.id)}/?_=${Date.now()}`, {
      credentials: 'same-origin', signal: controller.signal, headers: { Accept: 'text/html,*/*' },
    });
    // Any answer from the upstream itself means it is up; an error before
    // that (start failed, 5xx from swapvisor) says why.
    if (!resp.ok && resp.status >= 500 && stateOf(model.id) !== 'ready') {
      const body = await resp.text().catch(() => '');
      throw new Error(`${resp.status}: ${messageOf(body)}`);
    }
    resp.body?.cancel().catch(() => {});
  } catch (err) {
    if (err.name !== 'AbortError') {
      errors.set(model.id, `Load failed – ${err.message}`);
      toast(`Could not load ${model.id}: ${err.message}`, 'error');
    }
  } finally {
    if (pending.get(model.id)?.controller === controller) pending.delete(model.id);
    render();
  }
}

async function unloadModel(model) {
  pending.set(model.id, { kind: 'unload', since: performance.now(), controller: null });
  errors.delete(model.id);
  render();
  try {
    await request(`/api/models/unload/${modelPath(model.id)}`, { method: 'POST' });
  } catch (err) {
    errors.set(model.id, `Unload failed – ${err.message}`);
    toast(`Could not unload ${model.id}: ${err.message}`, 'error');
  } finally {
    if (pending.get(model.id)?.kind === 'unload') pending.delete(model.id);
    render();
  }
}

async function onUnloadAll() {
  const old = unloadAll.textContent;
  unloadAll.classList.add('pending');
  unloadAll.setAttribute('aria-busy', 'true');
  unloadAll.disabled = true;
  unloadAll.textContent = 'Unloading all…';
  for (const p of pending.values()) p.controller?.abort();
  try {
    await request('/api/models/unload', { method: 'POST' });
    toast('All models unloaded');
  } catch (err) {
    toast(`Unload all failed: ${err.message}`, 'error');
  } finally {
    unloadAll.classList.remove('pending');
    unloadAll.removeAttribute('aria-busy');
    unloadAll.textContent = old;
    render();
  }
}

function stateOf(id) {
  return store.models.find((m) => m.id === id)?.state;
}

function messageOf(body) {
  try {
    const parsed = JSON.parse(body);
    return parsed?.error?.message || parsed?.message || body;
  } catch {
    return body.replace(/<[^>]+>/g, ' ').trim().slice(0, 200) || 'error';
  }
}
