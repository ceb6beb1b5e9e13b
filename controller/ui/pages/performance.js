// Performance: CPU, memory, load, network and GPU charts from
// GET /api/performance?after=<RFC3339> (one hour kept server-side). Charts are
// plain SVG drawn here; no chart library.

import { h, fill, fmtBytes, fmtNum, load, save, errorText } from '../lib.js';

export const title = 'Performance';

const RANGES = [[5, '5 min'], [15, '15 min'], [60, '1 hour']];
const REFRESH_MS = 5000;
let sys = [];
let gpu = [];
let lastTs = null;
let timer = null;
let inFlight = false;
let visible = false;
let rangeSelect, autoRefresh, statusLine, sysCharts, gpuBox, gpuCharts, gpuNote;
let resizeObserver;

export function mount(root) {
  rangeSelect = h('select', { id: 'perf-range', onchange: () => { save('perf.range', rangeSelect.value); draw(); } },
    RANGES.map(([m, label]) => h('option', { value: m }, label)));
  rangeSelect.value = String(load('perf.range', 15));
  autoRefresh = h('input', {
    type: 'checkbox', id: 'perf-auto', checked: load('perf.auto', true),
    onchange: () => { save('perf.auto', autoRefresh.checked); schedule(); },
  });
  statusLine = h('p', { class: 'muted small', id: 'perf-status', role: 'status' }, 'Loading…');
  sysCharts = h('div', { class: 'charts', id: 'sys-charts' });
  gpuNote = h('p', { class: 'empty', id: 'gpu-note', hidden: true }, 'No GPU detected.');
  gpuCharts = h('div', { class: 'charts', id: 'gpu-charts' });
  gpuBox = h('section', { 'aria-labelledby': 'gpu-title' }, h('h2', { id: 'gpu-title' }, 'GPU'), gpuNote, gpuCharts);
  fill(root,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', { id: 'title-performance' }, 'Performance'), statusLine),
      h('div', { class: 'page-actions' },
        h('label', { class: 'field inline' }, h('span', {}, 'Range'), rangeSelect),
        h('label', { class: 'check' }, autoRefresh, ' Auto-refresh (5 s)'))),
    h('section', { 'aria-labelledby': 'sys-title' }, h('h2', { id: 'sys-title' }, 'System'), sysCharts),
    gpuBox);
  resizeObserver = new ResizeObserver(() => { if (visible) draw(); });
  resizeObserver.observe(sysCharts);
}

export function show() {
  visible = true;
  fetchMore();
  schedule();
}

export function hide() {
  visible = false;
  clearTimeout(timer);
}

function schedule() {
  clearTimeout(timer);
  if (visible && autoRefresh.checked) timer = setTimeout(async () => { await fetchMore(); schedule(); }, REFRESH_MS);
}

async function fetchMore() {
  if (inFlight) return;
  inFlight = true;
  try {
    const url = lastTs ? `/api/performance?after=${encodeURIComponent(lastTs)}` : '/api/performance';
    const resp = await fetch(url, { credentials: 'same-origin' });
    if (resp.status === 503) {
      statusLine.textContent = 'Performance monitoring is disabled in the config (performance.enabled).';
      return;
    }
    if (!resp.ok) {
      statusLine.textContent = `Performance data unavailable (${await errorText(resp)}).`;
      return;
    }
    const body = await resp.json();
    sys = sys.concat(body.sys_stats || []);
    gpu = gpu.concat(body.gpu_stats || []);
    const newest = sys.length ? sys[sys.length - 1].timestamp : null;
    if (newest) lastTs = newest;
    const cutoff = Date.now() - 3600e3 - 60e3;
    sys = sys.filter((s) => Date.parse(s.timestamp) >= cutoff);
    gpu = gpu.filter((s) => Date.parse(s.timestamp) >= cutoff);
    statusLine.textContent = sys.length
      ? `${sys.length} sample${sys.length === 1 ? '' : 's'} · last at ${new Date(Date.parse(newest)).toLocaleTimeString()}`
      : 'No samples yet: the first arrives a few seconds after start.';
    draw();
  } catch (err) {
    statusLine.textContent = `Could not reach the server (${err.message}).`;
  } finally {
    inFlight = false;
  }
}

function windowed(list) {
  const from = Date.now() - Number(rangeSelect.value) * 60e3;
  return list.filter((s) => Date.parse(s.timestamp) >= from);
}

let view = { tMin: 0, tMax: 0 };

function draw() {
  if (!visible) return;
  // The x axis spans the chosen range, or less while there is less history
  // (a fresh server), so a few samples are not squeezed into one corner.
  const now = Date.now();
  const first = sys.length ? Date.parse(sys[0].timestamp) : now;
  view = {
    tMin: Math.max(now - Number(rangeSelect.value) * 60e3, Math.min(first - 5e3, now - 60e3)),
    tMax: now,
  };
  const width = Math.max(240, Math.floor(sysCharts.clientWidth / (sysCharts.clientWidth > 900 ? 2 : 1)) - 24);
  const s = windowed(sys);
  const t = (x) => Date.parse(x.timestamp);
  const cpu = s.map((x) => ({ t: t(x), v: x.cpu_util_pct ?? avg(x.cpu_util_per_core) }));
  const cores = s.length ? (s[s.length - 1].cpu_util_per_core || []).length : 0;
  const memPct = s.map((x) => ({ t: t(x), v: x.mem_total_mb ? (100 * x.mem_used_mb) / x.mem_total_mb : null }));
  const swapPct = s.map((x) => ({ t: t(x), v: x.swap_total_mb ? (100 * x.swap_used_mb) / x.swap_total_mb : null }));
  const last = s[s.length - 1];
  const rates = netRates(s);
  fill(sysCharts,
    chart({
      id: 'chart-cpu', title: `CPU${cores ? ` (${cores} cores)` : ''}`, width, unit: '%', max: 100,
      series: [{ name: 'all cores', points: cpu }],
    }),
    chart({
      id: 'chart-memory', title: 'Memory', width, unit: '%', max: 100,
      subtitle: last ? `${fmtBytes(last.mem_used_mb * 1048576)} of ${fmtBytes(last.mem_total_mb * 1048576)} used` : '',
      series: [{ name: 'RAM used', points: memPct }, ...(last?.swap_total_mb ? [{ name: 'swap used', points: swapPct }] : [])],
    }),
    chart({
      id: 'chart-load', title: 'Load average', width, unit: '', digits: 2,
      series: [
        { name: '1 min', points: s.map((x) => ({ t: t(x), v: x.load_avg_1 })) },
        { name: '5 min', points: s.map((x) => ({ t: t(x), v: x.load_avg_5 })) },
        { name: '15 min', points: s.map((x) => ({ t: t(x), v: x.load_avg_15 })) },
      ],
    }),
    chart({
      id: 'chart-network', title: 'Network', width, minTop: 1024, format: (v) => `${fmtBytes(v)}/s`,
      series: [{ name: 'in', points: rates.recv }, { name: 'out', points: rates.sent }],
    }));
  drawGpu(width);
}

function drawGpu(width) {
  const g = windowed(gpu);
  const ids = [...new Set(gpu.map((x) => x.id))].sort((a, b) => a - b);
  gpuNote.hidden = ids.length > 0;
  if (!ids.length) {
    gpuNote.textContent = sys.length ? 'No GPU detected.' : 'No GPU data yet.';
    fill(gpuCharts);
    return;
  }
  const byId = (metric) => ids.map((id) => ({
    name: `GPU ${id}${nameOf(id)}`,
    points: g.filter((x) => x.id === id).map((x) => ({ t: Date.parse(x.timestamp), v: metric(x) })),
  }));
  fill(gpuCharts,
    chart({ id: 'chart-gpu-util', title: 'GPU utilization', width, unit: '%', max: 100, series: byId((x) => x.gpu_util_pct) }),
    chart({
      id: 'chart-gpu-mem', title: 'GPU memory used', width, unit: '%', max: 100,
      series: byId((x) => (x.mem_total_mb ? (100 * x.mem_used_mb) / x.mem_total_mb : null)),
    }),
    chart({ id: 'chart-gpu-temp', title: 'GPU temperature', width, unit: ' °C', series: byId((x) => x.temp_c) }),
    chart({ id: 'chart-gpu-power', title: 'GPU power', width, unit: ' W', series: byId((x) => x.power_draw_w) }));
}

function nameOf(id) {
  const rec = gpu.find((x) => x.id === id && x.name);
  return rec ? ` · ${rec.name}` : '';
}

function avg(list) {
  return list?.length ? list.reduce((a, b) => a + b, 0) / list.length : null;
}

/** Bytes per second in and out, all interfaces but loopback. */
function netRates(samples) {
  const recv = [];
  const sent = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = (Date.parse(b.timestamp) - Date.parse(a.timestamp)) / 1000;
    if (dt <= 0) continue;
    const sum = (s, key) => (s.net_io || []).filter((n) => n.name !== 'lo').reduce((acc, n) => acc + (n[key] || 0), 0);
    recv.push({ t: Date.parse(b.timestamp), v: Math.max(0, (sum(b, 'bytes_recv') - sum(a, 'bytes_recv')) / dt) });
    sent.push({ t: Date.parse(b.timestamp), v: Math.max(0, (sum(b, 'bytes_sent') - sum(a, 'bytes_sent')) / dt) });
  }
  return { recv, sent };
}

/** A line chart as an SVG: time on x, values on y; legend with latest values. */
function chart({ id, title: name, subtitle = '', width, height = 150, unit = '', max = null, minTop = 1, digits = 0, format = null, series }) {
  const fmt = format || ((v) => `${fmtNum(v, digits || (v < 10 && !max ? 2 : 0))}${unit}`);
  const all = series.flatMap((s) => s.points.filter((p) => p.v !== null && p.v !== undefined && Number.isFinite(p.v)));
  const { tMin, tMax } = view;
  const top = max ?? niceMax(Math.max(minTop, ...all.map((p) => p.v)));
  const labelWidth = Math.max(...[0, 0.5, 1].map((f) => fmt(top * f).length)) * 6.4;
  const pad = { l: Math.ceil(labelWidth) + 10, r: 8, t: 8, b: 20 };
  const x = (t) => pad.l + ((t - tMin) / (tMax - tMin)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / (top || 1)) * (height - pad.t - pad.b);
  const grid = [0, 0.5, 1].map((f) => {
    const v = top * f;
    return h('g', { class: 'grid' },
      h('line', { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }),
      all.length ? h('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v)) : null);
  });
  const ticks = [tMin, (tMin + tMax) / 2, tMax].map((t, i) =>
    h('text', { class: 'tick', x: x(t), y: height - 4, 'text-anchor': ['start', 'middle', 'end'][i] },
      new Date(t).toLocaleTimeString(undefined, tMax - tMin < 600e3
        ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
        : { hour: '2-digit', minute: '2-digit' })));
  const lines = series.map((s, i) => {
    const pts = s.points.filter((p) => p.v !== null && p.v !== undefined && Number.isFinite(p.v) && p.t >= tMin);
    if (pts.length === 1) return h('circle', { class: `series series-${i % 6}`, cx: x(pts[0].t), cy: y(Math.min(pts[0].v, top)), r: 3 });
    return h('polyline', {
      class: `series series-${i % 6}`, fill: 'none',
      points: pts.map((p) => `${x(p.t).toFixed(1)},${y(Math.min(p.v, top)).toFixed(1)}`).join(' '),
    });
  });
  const latest = series.map((s) => {
    const pts = s.points.filter((p) => p.v !== null && p.v !== undefined && Number.isFinite(p.v));
    return pts.length ? pts[pts.length - 1].v : null;
  });
  const summary = series.map((s, i) => `${s.name} ${latest[i] === null ? 'no data' : fmt(latest[i])}`).join(', ');
  return h('figure', { class: 'chart', id },
    h('figcaption', {},
      h('span', { class: 'chart-title' }, name),
      subtitle ? h('span', { class: 'muted small' }, ` · ${subtitle}`) : null),
    h('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${name}: ${summary}` },
      h('title', {}, `${name}: ${summary}`), grid, ticks, lines,
      all.length ? null : h('text', { class: 'nodata', x: width / 2, y: height / 2, 'text-anchor': 'middle' }, 'no data yet')),
    h('ul', { class: 'legend' }, series.map((s, i) => h('li', {},
      h('span', { class: `swatch series-${i % 6}`, 'aria-hidden': 'true' }),
      `${s.name}: `, h('strong', {}, latest[i] === null ? '–' : fmt(latest[i]))))));
}

function niceMax(v) {
  if (v <= 0) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * mag) return m * mag;
  return 10 * mag;
}
