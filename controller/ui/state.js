// The shared live state, fed by one EventSource on /api/events (llama-swap.md
// §5.3): logData, modelStatus, inflight, activity, uiConfig, profileChanged.
// Reconnects with backoff 1 s -> 5 s; on (re)connect the state is reset and
// refilled from the initial messages. While the stream is down, the model list
// is polled from /running + /v1/models so the Models page never goes stale.

import { Emitter, getJSON, capText } from './lib.js';

export const LOG_LIMIT = 100 * 1024;

export const store = {
  conn: 'connecting',         // connecting | connected | disconnected
  models: [],                 // modelStatus entries
  modelsKnown: false,
  inflight: new Map(),        // id -> in-flight entry
  inflightAt: new Map(),      // id -> performance.now() when last seen (elapsed base)
  logs: { proxy: '', upstream: '' },
  uiConfig: null,
  profiles: { active: null, profiles: [] },
  version: null,
};

export const bus = new Emitter();

let source = null;
let delay = 1000;
let retryTimer = null;
let pollTimer = null;

function setConn(state) {
  if (store.conn === state) return;
  store.conn = state;
  bus.emit('conn', state);
}

export function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  setConn(store.conn === 'connected' ? 'connecting' : store.conn);
  source = new EventSource('/api/events');
  source.onopen = () => {
    delay = 1000;
    stopPolling();
    reset();
    setConn('connected');
    refreshProfiles();
    refreshVersion();
  };
  source.onmessage = (ev) => {
    let msg, data;
    try {
      msg = JSON.parse(ev.data);
      data = typeof msg.data === 'string' ? JSON.parse(msg.data) : msg.data;
    } catch (err) {
      console.warn('bad event', err);
      return;
    }
    handle(msg.type, data);
  };
  source.onerror = () => {
    source.close();
    source = null;
    setConn('disconnected');
    startPolling();
    retryTimer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 5000);
  };
}

function reset() {
  store.logs = { proxy: '', upstream: '' };
  store.inflight.clear();
  store.inflightAt.clear();
  bus.emit('logs-reset');
  bus.emit('inflight');
}

function handle(type, data) {
  switch (type) {
    case 'logData': {
      const src = data.source === 'upstream' ? 'upstream' : 'proxy';
      store.logs[src] = capText(store.logs[src] + (data.data || ''), LOG_LIMIT);
      bus.emit('log', { source: src, text: data.data || '' });
      break;
    }
    case 'modelStatus':
      setModels(Array.isArray(data) ? data : []);
      break;
    case 'inflight':
      applyInflight(data);
      break;
    case 'activity':
      bus.emit('activity', data);
      break;
    case 'uiConfig':
      store.uiConfig = data;
      bus.emit('uiConfig', data);
      break;
    case 'profileChanged':
      store.profiles = { ...store.profiles, active: data?.active ?? null };
      bus.emit('profiles', store.profiles);
      break;
    default:
      break;
  }
}

export function setModels(models) {
  store.models = models;
  store.modelsKnown = true;
  bus.emit('models', models);
}

function applyInflight(data) {
  const now = performance.now();
  if (data.operation === 'snapshot') {
    store.inflight.clear();
    store.inflightAt.clear();
    for (const r of data.requests || []) {
      store.inflight.set(String(r.id), r);
      store.inflightAt.set(String(r.id), now);
    }
  } else if (data.operation === 'upsert' && data.request) {
    store.inflight.set(String(data.request.id), data.request);
    store.inflightAt.set(String(data.request.id), now);
  } else if (data.operation === 'remove') {
    store.inflight.delete(String(data.id));
    store.inflightAt.delete(String(data.id));
  }
  bus.emit('inflight');
}

export function modelState(id) {
  return store.models.find((m) => m.id === id)?.state || 'stopped';
}

export async function refreshProfiles() {
  try {
    store.profiles = await getJSON('/api/profiles');
    bus.emit('profiles', store.profiles);
  } catch { /* endpoint optional */ }
}

async function refreshVersion() {
  try {
    store.version = await getJSON('/api/version');
    bus.emit('version', store.version);
  } catch { /* endpoint optional */ }
}

// -- fallback while the event stream is down -----------------------------------

function startPolling() {
  if (pollTimer) return;
  const tick = async () => {
    try {
      const [running, listing] = await Promise.all([
        getJSON('/running'),
        getJSON('/v1/models'),
      ]);
      const states = new Map((running.running || []).map((r) => [r.model, r.state]));
      const known = new Map(store.models.map((m) => [m.id, m]));
      for (const rec of listing.data || []) {
        const type = rec.meta?.llamaswap?.type;
        if (type !== 'model' || known.has(rec.id)) continue;
        known.set(rec.id, {
          id: rec.id, name: rec.name || '', description: rec.description || '',
          state: 'stopped', unlisted: false, peerID: '',
          aliases: rec.meta?.llamaswap?.aliases, capabilities: rec.capabilities,
        });
      }
      for (const [id, state] of states) {
        if (!known.has(id)) known.set(id, { id, name: '', description: '', state, unlisted: false, peerID: '' });
      }
      setModels([...known.values()].map((m) => (m.peerID ? m : { ...m, state: states.get(m.id) || 'stopped' })));
    } catch { /* server unreachable: keep the last state */ }
  };
  tick();
  pollTimer = setInterval(tick, 3000);
}

function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = null;
}

// -- /v1/models (the playground's model list) ---------------------------------

let listing = null;

export async function modelList(force = false) {
  if (!listing || force) {
    listing = getJSON('/v1/models').then((r) => r.data || []).catch((err) => {
      listing = null;
      throw err;
    });
  }
  return listing;
}
