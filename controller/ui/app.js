// swapvisor's web UI: the shell (navigation, theme, connection state, profile
// selector) and a hash router (#/models, #/logs, ...). Each page is mounted on
// first visit and then kept (hidden) so its state survives navigation.

import { $, $$, h, fill, load, save, request, toast } from './lib.js';
import { bus, connect, store, refreshProfiles } from './state.js';
import * as models from './pages/models.js';
import * as logs from './pages/logs.js';
import * as playground from './pages/playground.js';
import * as activity from './pages/activity.js';
import * as performance from './pages/performance.js';

const PAGES = { models, logs, playground, activity, performance };
const DEFAULT = 'models';
const mounted = new Map();
let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  const name = path.split('/')[0];
  return { name: PAGES[name] ? name : DEFAULT, params: new URLSearchParams(query) };
}

function route() {
  const { name, params } = parseHash();
  const main = $('#main');
  if (!mounted.has(name)) {
    const root = h('section', { class: 'page', id: `page-${name}`, 'aria-labelledby': `title-${name}` });
    main.append(root);
    PAGES[name].mount(root);
    mounted.set(name, root);
  }
  for (const [other, root] of mounted) {
    const active = other === name;
    root.hidden = !active;
    if (!active && other === current) PAGES[other].hide?.();
  }
  PAGES[name].show?.(params);
  current = name;
  for (const link of $$('#nav a')) {
    if (link.dataset.route === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.body.dataset.page = name;
  updateTitle();
}

// -- theme: system / light / dark, stored in localStorage ----------------------

const THEMES = ['system', 'light', 'dark'];
const THEME_ICON = { system: '◐', light: '☀', dark: '☾' };

function applyTheme(theme) {
  if (theme === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  const button = $('#theme');
  fill(button,
    h('span', { class: 'theme-icon', 'aria-hidden': 'true' }, THEME_ICON[theme]),
    h('span', { class: 'theme-label' }, `${theme[0].toUpperCase()}${theme.slice(1)}`));
  button.setAttribute('aria-label', `Colour theme: ${theme}. Activate to change.`);
  button.title = `Theme: ${theme} (click to change)`;
}

function initTheme() {
  let theme = load('theme', 'system');
  if (!THEMES.includes(theme)) theme = 'system';
  applyTheme(theme);
  $('#theme').addEventListener('click', () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    save('theme', theme);
    applyTheme(theme);
  });
}

// -- connection state -----------------------------------------------------------

const CONN_TEXT = { connecting: 'connecting…', connected: 'live', disconnected: 'offline – retrying' };
const CONN_TITLE = { connecting: '🟡', connected: '🟢', disconnected: '🔴' };

function updateConn() {
  const el = $('#conn');
  el.dataset.conn = store.conn;
  $('.conn-text', el).textContent = CONN_TEXT[store.conn];
  el.title = `Event stream: ${store.conn}`;
  updateTitle();
}

function updateTitle() {
  const page = current ? PAGES[current].title : '';
  document.title = `${CONN_TITLE[store.conn] || ''} ${page ? page + ' · ' : ''}swapvisor`.trim();
}

// -- profiles -------------------------------------------------------------------

function renderProfiles() {
  const wrap = $('#profile-wrap');
  const select = $('#profile');
  const list = store.profiles.profiles || [];
  wrap.hidden = list.length === 0;
  if (!list.length) return;
  fill(select,
    h('option', { value: '' }, 'None'),
    list.map((p) => h('option', { value: p.id, title: p.description || '' }, p.id)));
  select.value = store.profiles.active || '';
}

async function changeProfile() {
  const select = $('#profile');
  select.disabled = true;
  try {
    await request('/api/profiles/active', {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: select.value || null }),
    });
    await refreshProfiles();
  } catch (err) {
    toast(`Could not change profile: ${err.message}`, 'error');
    renderProfiles();
  } finally {
    select.disabled = false;
  }
}

// -- boot -------------------------------------------------------------------------

function boot() {
  initTheme();
  bus.on('conn', updateConn);
  bus.on('profiles', renderProfiles);
  bus.on('version', (v) => {
    $('#version').textContent = v?.version ? `v${v.version}` : '';
  });
  $('#profile').addEventListener('change', changeProfile);
  window.addEventListener('hashchange', route);
  updateConn();
  connect();
  route();
}

boot();
