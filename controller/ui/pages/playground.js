// Playground: streaming chat with any model from /v1/models, plus embeddings,
// transcription, speech and image tools where the model's capabilities say it
// can do them. While a model loads, the chat shows either swapvisor's loading
// block (sendLoadingState: reasoning_content between ━━━━━ markers) or a
// "loading model…" state with the elapsed time until the first token.

import {
  h, fill, errorText, sseEvents, fmtDuration, fmtNum, load, save, toast,
  stateBadge, updateStateBadge,
} from '../lib.js';
import { bus, store, modelList, modelState } from '../state.js';

export const title = 'Playground';

const MARKER = '━━━━━';
const SESSION = `lspg-${Math.random().toString(36).slice(2, 9)}`;
const TABS = [
  { id: 'chat', label: 'Chat' },
  { id: 'embeddings', label: 'Embeddings' },
  { id: 'transcription', label: 'Transcription' },
  { id: 'speech', label: 'Speech' },
  { id: 'images', label: 'Images' },
];

let records = [];
let modelSelect, modelBadge, tabList, capsNote, panels = {}, tabButtons = {};
let currentTab = load('playground.tab', 'chat');
const chat = { history: [], busy: null };

export function mount(root) {
  modelSelect = h('select', { id: 'pg-model', onchange: onModel });
  modelBadge = stateBadge('stopped');
  tabList = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Playground tools' });
  for (const tab of TABS) {
    const button = h('button', {
      type: 'button', role: 'tab', id: `tab-${tab.id}`, class: 'tab',
      'aria-controls': `panel-${tab.id}`, 'aria-selected': 'false', tabindex: '-1',
      onclick: () => selectTab(tab.id), onkeydown: onTabKey,
    }, tab.label);
    tabButtons[tab.id] = button;
    tabList.append(button);
  }
  capsNote = h('p', { class: 'muted small caps-note', hidden: true },
    'Audio and image tools appear for models whose capabilities say they support them.');
  panels = {
    chat: chatPanel(),
    embeddings: embeddingsPanel(),
    transcription: transcriptionPanel(),
    speech: speechPanel(),
    images: imagesPanel(),
  };
  for (const [id, panel] of Object.entries(panels)) {
    panel.setAttribute('role', 'tabpanel');
    panel.id = `panel-${id}`;
    panel.setAttribute('aria-labelledby', `tab-${id}`);
    panel.hidden = true;
  }
  fill(root,
    h('div', { class: 'page-head' },
      h('h1', { id: 'title-playground' }, 'Playground'),
      h('div', { class: 'page-actions model-pick' },
        h('label', { class: 'field' }, h('span', {}, 'Model'), modelSelect),
        modelBadge)),
    tabList, capsNote,
    Object.values(panels));
  bus.on('models', () => updateStateBadge(modelBadge, currentModelState()));
  refreshModels();
}

export function show() {
  refreshModels();
}

async function refreshModels() {
  try {
    records = await modelList(true);
  } catch (err) {
    toast(`Could not list models: ${err.message}`, 'error');
    return;
  }
  const groups = { model: [], alias: [], selector: [], profile: [], peer: [] };
  for (const rec of records) {
    const type = rec.meta?.llamaswap?.type || 'model';
    (groups[type] || groups.model).push(rec);
  }
  const names = { model: 'Models', alias: 'Aliases', selector: 'Selectors', profile: 'Profiles', peer: 'Peers' };
  const wanted = modelSelect.value || load('playground.model', '');
  fill(modelSelect, Object.entries(groups).filter(([, list]) => list.length).map(([type, list]) =>
    h('optgroup', { label: names[type] },
      list.map((rec) => h('option', { value: rec.id }, rec.name && rec.name !== rec.id ? `${rec.id} – ${rec.name}` : rec.id)))));
  if (!records.length) fill(modelSelect, h('option', { value: '' }, 'no models'));
  if (records.some((r) => r.id === wanted)) modelSelect.value = wanted;
  onModel();
}

function selected() {
  return records.find((r) => r.id === modelSelect.value);
}

function currentModelId() {
  const rec = selected();
  if (!rec) return modelSelect.value;
  const meta = rec.meta?.llamaswap || {};
  return meta.type === 'alias' ? meta.modelID : rec.id;
}

function currentModelState() {
  const rec = selected();
  const type = rec?.meta?.llamaswap?.type;
  if (type === 'peer') return 'peer';
  if (type === 'selector' || type === 'profile') return rec.status?.value === 'loaded' ? 'ready' : 'stopped';
  return modelState(currentModelId());
}

/** Which tools the selected model supports (chat always). */
function toolsFor(rec) {
  const caps = rec?.capabilities || {};
  const arch = rec?.architecture;
  const known = Boolean(rec?.capabilities || rec?.architecture);
  const inputs = arch?.input_modalities || [];
  return {
    known,
    chat: true,
    embeddings: !known || !inputs.length || inputs.includes('text'),
    transcription: Boolean(caps.audio_transcriptions),
    speech: Boolean(caps.audio_speech),
    images: Boolean(caps.image_generation),
  };
}

function onModel() {
  save('playground.model', modelSelect.value);
  updateStateBadge(modelBadge, currentModelState());
  const tools = toolsFor(selected());
  for (const tab of TABS) tabButtons[tab.id].hidden = !tools[tab.id];
  capsNote.hidden = tools.known;
  selectTab(tools[currentTab] ? currentTab : 'chat');
}

function selectTab(id) {
  currentTab = id;
  save('playground.tab', id);
  for (const tab of TABS) {
    const on = tab.id === id;
    tabButtons[tab.id].setAttribute('aria-selected', String(on));
    tabButtons[tab.id].tabIndex = on ? 0 : -1;
    panels[tab.id].hidden = !on;
  }
}

function onTabKey(ev) {
  const visible = TABS.filter((t) => !tabButtons[t.id].hidden).map((t) => t.id);
  const i = visible.indexOf(currentTab);
  let next = null;
  if (ev.key === 'ArrowRight') next = visible[(i + 1) % visible.length];
  else if (ev.key === 'ArrowLeft') next = visible[(i - 1 + visible.length) % visible.length];
  else if (ev.key === 'Home') next = visible[0];
  else if (ev.key === 'End') next = visible[visible.length - 1];
  if (next) {
    ev.preventDefault();
    selectTab(next);
    tabButtons[next].focus();
  }
}

function headers(extra = {}) {
  return { 'X-Session-ID': SESSION, ...extra };
}

/** Shows "loading model… 3.2 s" / "waiting… 0.4 s" until done() is called. */
function timer(el, modelId) {
  const began = performance.now();
  const loading = currentModelState() !== 'ready' && currentModelState() !== 'peer';
  const paint = () => {
    const t = fmtDuration(performance.now() - began);
    el.textContent = loading && modelState(modelId) !== 'ready'
      ? `Loading model ${modelId}… ${t}`
      : `Waiting for ${modelId}… ${t}`;
  };
  paint();
  el.hidden = false;
  const id = setInterval(paint, 100);
  return {
    elapsed: () => performance.now() - began,
    stop(text) { clearInterval(id); el.textContent = text || ''; el.hidden = !text; },
  };
}

// -- chat ----------------------------------------------------------------------

let messages, prompt, sendBtn, stopBtn, chatStatus, sysPrompt, temperature, maxTokens;

function chatPanel() {
  messages = h('div', { class: 'messages', id: 'chat-messages', 'aria-label': 'Conversation', role: 'log', 'aria-live': 'off' },
    h('p', { class: 'empty', id: 'chat-empty' }, 'Ask something. The model loads on demand; the first answer may take a while.'));
  prompt = h('textarea', {
    id: 'chat-input', rows: 3, placeholder: 'Message (Enter to send, Shift+Enter for a new line)',
    'aria-label': 'Message', onkeydown: (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
    },
  });
  sendBtn = h('button', { class: 'btn primary', type: 'button', id: 'chat-send', onclick: send }, 'Send');
  stopBtn = h('button', { class: 'btn secondary', type: 'button', id: 'chat-stop', hidden: true, onclick: stop }, 'Stop');
  const clear = h('button', { class: 'btn ghost', type: 'button', id: 'chat-clear', onclick: clearChat }, 'New chat');
  chatStatus = h('p', { class: 'chat-status muted small', id: 'chat-status', role: 'status', 'aria-live': 'polite' });
  sysPrompt = h('textarea', {
    id: 'chat-system', rows: 2, value: load('playground.system', 'You are a helpful assistant.'),
    onchange: () => save('playground.system', sysPrompt.value),
  });
  temperature = h('input', {
    id: 'chat-temperature', type: 'number', min: 0, max: 2, step: 0.1, value: load('playground.temperature', 0.7),
    onchange: () => save('playground.temperature', temperature.value),
  });
  maxTokens = h('input', {
    id: 'chat-max-tokens', type: 'number', min: 1, step: 1, value: load('playground.maxTokens', 512),
    onchange: () => save('playground.maxTokens', maxTokens.value),
  });
  return h('div', { class: 'tool chat' },
    messages,
    h('div', { class: 'composer' },
      prompt,
      h('div', { class: 'composer-actions' }, sendBtn, stopBtn, clear, chatStatus)),
    h('details', { class: 'options' },
      h('summary', {}, 'Options'),
      h('div', { class: 'options-grid' },
        h('label', { class: 'field wide' }, h('span', {}, 'System prompt'), sysPrompt),
        h('label', { class: 'field' }, h('span', {}, 'Temperature'), temperature),
        h('label', { class: 'field' }, h('span', {}, 'Max tokens'), maxTokens))));
}

function clearChat() {
  stop();
  chat.history = [];
  fill(messages, h('p', { class: 'empty' }, 'New conversation.'));
  chatStatus.textContent = '';
}

function stop() {
  chat.busy?.abort();
}

function bubble(role, label) {
  const body = h('div', { class: 'msg-body' });
  const el = h('article', { class: ['msg', `msg-${role}`], 'aria-label': `${label} says` },
    h('header', { class: 'msg-head' }, label), body);
  $empty()?.remove();
  messages.append(el);
  return { el, body };
}

function $empty() {
  return messages.querySelector('.empty');
}

function scrollDown() {
  const nearBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 120;
  if (nearBottom) messages.scrollTop = messages.scrollHeight;
}

async function send() {
  const text = prompt.value.trim();
  const model = modelSelect.value;
  if (!text || chat.busy) return;
  if (!model) { toast('Choose a model first', 'error'); return; }
  prompt.value = '';
  const user = bubble('user', 'You');
  user.body.textContent = text;
  chat.history.push({ role: 'user', content: text });

  const a = bubble('assistant', model);
  a.el.dataset.phase = 'waiting';
  const loadBox = h('div', { class: 'loading-block', role: 'status' },
    h('span', { class: 'spinner', 'aria-hidden': 'true' }), h('span', { class: 'loading-text' }, ''),
    h('pre', { class: 'loading-log', hidden: true }));
  const reasoning = h('details', { class: 'reasoning', hidden: true, open: true },
    h('summary', {}, 'Reasoning'), h('div', { class: 'reasoning-body' }));
  const answer = h('div', { class: 'answer', 'aria-label': 'Answer' });
  const meta = h('footer', { class: 'msg-meta muted small' });
  a.body.replaceWith(h('div', { class: 'msg-body' }, loadBox, reasoning, answer, meta));

  const controller = new AbortController();
  chat.busy = controller;
  sendBtn.hidden = true;
  stopBtn.hidden = false;
  prompt.setAttribute('aria-busy', 'true');
  const began = performance.now();
  let firstToken = null;
  let sawLoading = false;
  const modelId = currentModelId();
  const wasReady = currentModelState() === 'ready' || currentModelState() === 'peer';
  const loadText = loadBox.querySelector('.loading-text');
  const loadLog = loadBox.querySelector('.loading-log');
  const paint = () => {
    const t = fmtDuration(performance.now() - began);
    if (firstToken !== null) return;
    if (a.el.dataset.phase === 'loading' || (!wasReady && modelState(modelId) !== 'ready')) {
      sawLoading = true;
      loadText.textContent = `Loading model ${modelId}… ${t}`;
      chatStatus.textContent = `Loading model ${modelId}…`;
    } else {
      loadText.textContent = `Waiting for the first token… ${t}`;
      chatStatus.textContent = 'Waiting for the first token…';
    }
  };
  paint();
  const ticker = setInterval(paint, 100);

  let raw = '';      // reasoning_content as received (may hold the loading block)
  let content = '';
  let usage = null, timings = null, error = null;
  const render = () => {
    const split = splitLoading(raw);
    if (split.loading !== null) {
      sawLoading = true;
      loadLog.hidden = false;
      loadLog.textContent = split.loading.trim();
      if (split.loadingDone) loadBox.classList.add('done');
      else a.el.dataset.phase = 'loading';
    }
    let think = split.reasoning;
    let visible = content;
    const tagged = splitThink(content);
    if (tagged) { think = (think ? think + '\n' : '') + tagged.think; visible = tagged.rest; }
    if (think.trim()) {
      reasoning.hidden = false;
      reasoning.querySelector('.reasoning-body').textContent = think.trim();
    }
    if (firstToken === null && (think.trim() || visible)) {
      firstToken = performance.now();
      clearInterval(ticker);
      loadBox.hidden = true;
    }
    if (visible) {
      a.el.dataset.phase = 'content';
      answer.textContent = visible;
      chatStatus.textContent = 'Generating…';
    } else if (think.trim()) {
      a.el.dataset.phase = 'reasoning';
      chatStatus.textContent = 'Thinking…';
    }
    scrollDown();
  };

  try {
    const resp = await fetch('/v1/chat/completions', {
      method: 'POST', credentials: 'same-origin', signal: controller.signal,
      headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
      body: JSON.stringify({
        model,
        messages: [
          ...(sysPrompt.value.trim() ? [{ role: 'system', content: sysPrompt.value.trim() }] : []),
          ...chat.history,
        ],
        stream: true,
        stream_options: { include_usage: true },
        temperature: Number(temperature.value),
        max_tokens: Number(maxTokens.value) || undefined,
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    if (!(resp.headers.get('content-type') || '').includes('text/event-stream')) {
      const body = await resp.json();
      content = body.choices?.[0]?.message?.content || '';
      raw = body.choices?.[0]?.message?.reasoning_content || '';
      usage = body.usage || null;
      timings = body.timings || null;
      render();
    } else {
      for await (const ev of sseEvents(resp)) {
        if (ev.data === '[DONE]') break;
        let chunk;
        try { chunk = JSON.parse(ev.data); } catch { chunk = null; }
        if (ev.event === 'error' || chunk?.error || (chunk === null && ev.event === 'raw')) {
          error = chunk?.error?.message || chunk?.error || ev.data;
          break;
        }
        if (!chunk) continue;
        const delta = chunk.choices?.[0]?.delta || {};
        if (delta.reasoning_content) raw += delta.reasoning_content;
        if (delta.reasoning) raw += delta.reasoning;
        if (delta.content) content += delta.content;
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
        render();
      }
    }
    if (error) throw new Error(typeof error === 'string' ? error : JSON.stringify(error));
    const tagged = splitThink(content);
    chat.history.push({ role: 'assistant', content: tagged ? tagged.rest : content });
    a.el.dataset.phase = 'done';
    if (!content && !raw) answer.textContent = '(empty answer)';
    meta.textContent = (sawLoading ? 'model loaded · ' : '') + stats(began, firstToken, usage, timings);
    chatStatus.textContent = 'Done.';
  } catch (err) {
    const aborted = err.name === 'AbortError';
    a.el.dataset.phase = aborted ? 'stopped' : 'error';
    loadBox.hidden = true;
    meta.textContent = '';
    meta.append(h('span', { class: aborted ? 'muted' : 'error-text' }, aborted ? 'Stopped.' : `Error: ${err.message}`));
    chatStatus.textContent = aborted ? 'Stopped.' : 'Failed.';
    if (content) chat.history.push({ role: 'assistant', content });
    else chat.history.pop(); // let the user retry the same question
  } finally {
    clearInterval(ticker);
    chat.busy = null;
    sendBtn.hidden = false;
    stopBtn.hidden = true;
    prompt.removeAttribute('aria-busy');
    prompt.focus();
  }
}

/** Split swapvisor's loading block (between ━━━━━ markers) from real reasoning. */
export function splitLoading(raw) {
  const start = raw.indexOf(MARKER);
  if (start < 0 || raw.slice(0, start).trim()) return { loading: null, loadingDone: false, reasoning: raw };
  const from = start + MARKER.length;
  const end = raw.indexOf(MARKER, from);
  if (end < 0) return { loading: raw.slice(from), loadingDone: false, reasoning: '' };
  return { loading: raw.slice(from, end), loadingDone: true, reasoning: raw.slice(end + MARKER.length).replace(/^\s+/, '') };
}

/** `<think>…</think>` at the start of the content is reasoning too. */
function splitThink(content) {
  const m = /^\s*<think>([\s\S]*?)(<\/think>|$)/.exec(content);
  if (!m) return null;
  return { think: m[1], rest: content.slice(m[0].length).replace(/^\s+/, '') };
}

function stats(began, firstToken, usage, timings) {
  const parts = [];
  const total = performance.now() - began;
  if (firstToken !== null) parts.push(`first token ${fmtDuration(firstToken - began)}`);
  parts.push(`total ${fmtDuration(total)}`);
  const out = timings?.predicted_n ?? usage?.completion_tokens;
  const inp = timings?.prompt_n ?? usage?.prompt_tokens;
  if (inp !== undefined) parts.push(`${fmtNum(inp)} prompt tokens`);
  if (out !== undefined) parts.push(`${fmtNum(out)} generated`);
  const speed = timings?.predicted_per_second
    ?? (out && firstToken !== null ? out / ((performance.now() - firstToken) / 1000) : undefined);
  if (speed) parts.push(`${fmtNum(speed, 1)} tok/s`);
  return parts.join(' · ');
}

// -- embeddings -------------------------------------------------------------------

function toolShell(id, intro, fields, buttonLabel, run) {
  const button = h('button', { class: 'btn primary', type: 'button', id: `${id}-run` }, buttonLabel);
  const status = h('p', { class: 'muted small tool-status', id: `${id}-status`, role: 'status', 'aria-live': 'polite', hidden: true });
  const out = h('div', { class: 'tool-output', id: `${id}-output` });
  let controller = null;
  button.addEventListener('click', async () => {
    if (controller) { controller.abort(); return; }
    const model = modelSelect.value;
    if (!model) { toast('Choose a model first', 'error'); return; }
    controller = new AbortController();
    button.textContent = 'Cancel';
    button.classList.add('pending');
    button.setAttribute('aria-busy', 'true');
    const t = timer(status, currentModelId());
    try {
      await run({ model, out, signal: controller.signal });
      t.stop(`Done in ${fmtDuration(t.elapsed())}.`);
    } catch (err) {
      t.stop(err.name === 'AbortError' ? 'Cancelled.' : '');
      if (err.name !== 'AbortError') fill(out, h('p', { class: 'error-text', role: 'alert' }, `Error: ${err.message}`));
    } finally {
      controller = null;
      button.textContent = buttonLabel;
      button.classList.remove('pending');
      button.removeAttribute('aria-busy');
    }
  });
  return h('div', { class: 'tool' },
    h('p', { class: 'muted' }, intro),
    h('div', { class: 'tool-form' }, fields, h('div', { class: 'composer-actions' }, button, status)),
    out);
}

async function postJSONStrict(path, body, signal) {
  const resp = await fetch(path, {
    method: 'POST', credentials: 'same-origin', signal,
    headers: headers({ 'Content-Type': 'application/json' }), body: JSON.stringify(body),
  });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp;
}

function embeddingsPanel() {
  const input = h('textarea', { id: 'emb-input', rows: 3, 'aria-label': 'Text to embed', value: 'The quick brown fox jumps over the lazy dog.' });
  return toolShell('emb', 'POST /v1/embeddings: the vector for a piece of text.',
    h('label', { class: 'field wide' }, h('span', {}, 'Text'), input), 'Embed',
    async ({ model, out, signal }) => {
      const resp = await postJSONStrict('/v1/embeddings', { model, input: input.value }, signal);
      const body = await resp.json();
      const vec = body.data?.[0]?.embedding || [];
      const norm = Math.sqrt(vec.reduce((s, x) => s + x * x, 0));
      fill(out,
        h('p', {}, `${vec.length} dimensions · L2 norm ${norm.toFixed(4)}${body.usage?.prompt_tokens ? ` · ${body.usage.prompt_tokens} tokens` : ''}`),
        h('pre', { class: 'code' }, `[${vec.slice(0, 24).map((x) => x.toFixed(5)).join(', ')}${vec.length > 24 ? ', …' : ''}]`));
    });
}

function transcriptionPanel() {
  const file = h('input', { id: 'stt-file', type: 'file', accept: 'audio/*,video/*' });
  const language = h('input', { id: 'stt-language', type: 'text', placeholder: 'auto', size: 6 });
  return toolShell('stt', 'POST /v1/audio/transcriptions: upload a recording, get its text.',
    [h('label', { class: 'field' }, h('span', {}, 'Audio file'), file),
      h('label', { class: 'field' }, h('span', {}, 'Language (optional)'), language)],
    'Transcribe',
    async ({ model, out, signal }) => {
      if (!file.files?.length) throw new Error('choose an audio file first');
      const form = new FormData();
      form.append('model', model);
      form.append('file', file.files[0]);
      if (language.value.trim()) form.append('language', language.value.trim());
      const resp = await fetch('/v1/audio/transcriptions', {
        method: 'POST', credentials: 'same-origin', signal, headers: headers(), body: form,
      });
      if (!resp.ok) throw new Error(await errorText(resp));
      const text = await resp.text();
      let shown = text;
      try { shown = JSON.parse(text).text ?? text; } catch { /* plain text */ }
      fill(out, h('div', { class: 'transcript' }, shown));
    });
}

function speechPanel() {
  const input = h('textarea', { id: 'tts-input', rows: 3, 'aria-label': 'Text to speak', value: 'Hello from swapvisor.' });
  const voice = h('input', { id: 'tts-voice', type: 'text', value: 'alloy', list: 'tts-voices' });
  const voices = h('datalist', { id: 'tts-voices' });
  const format = h('select', { id: 'tts-format' }, ['mp3', 'wav', 'opus', 'flac'].map((f) => h('option', { value: f }, f)));
  voice.addEventListener('focus', async () => {
    try {
      const resp = await fetch(`/v1/audio/voices?model=${encodeURIComponent(modelSelect.value)}`, { credentials: 'same-origin', headers: headers() });
      if (!resp.ok) return;
      const body = await resp.json();
      const list = Array.isArray(body) ? body : body.voices || body.data || [];
      fill(voices, list.map((v) => h('option', { value: typeof v === 'string' ? v : v.id || v.name })));
    } catch { /* optional */ }
  }, { once: true });
  let url = null;
  return toolShell('tts', 'POST /v1/audio/speech: text in, audio out.',
    [h('label', { class: 'field wide' }, h('span', {}, 'Text'), input),
      h('label', { class: 'field' }, h('span', {}, 'Voice'), voice, voices),
      h('label', { class: 'field' }, h('span', {}, 'Format'), format)],
    'Speak',
    async ({ model, out, signal }) => {
      const resp = await postJSONStrict('/v1/audio/speech',
        { model, input: input.value, voice: voice.value, response_format: format.value }, signal);
      const blob = await resp.blob();
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(blob);
      fill(out,
        h('audio', { controls: true, src: url, 'aria-label': 'Generated speech' }),
        h('p', {}, h('a', { href: url, download: `speech.${format.value}` }, `Download (${blob.size.toLocaleString()} bytes)`)));
    });
}

function imagesPanel() {
  const input = h('textarea', { id: 'img-prompt', rows: 3, 'aria-label': 'Image prompt', value: 'a lighthouse at dusk, watercolor' });
  const size = h('select', { id: 'img-size' }, ['256x256', '512x512', '1024x1024'].map((s) => h('option', { value: s, selected: s === '512x512' }, s)));
  return toolShell('img', 'POST /v1/images/generations: a prompt in, an image out.',
    [h('label', { class: 'field wide' }, h('span', {}, 'Prompt'), input),
      h('label', { class: 'field' }, h('span', {}, 'Size'), size)],
    'Generate',
    async ({ model, out, signal }) => {
      const resp = await postJSONStrict('/v1/images/generations',
        { model, prompt: input.value, n: 1, size: size.value, response_format: 'b64_json' }, signal);
      const body = await resp.json();
      const images = (body.data || []).map((d) => d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url).filter(Boolean);
      if (!images.length) throw new Error('the answer held no image');
      fill(out, h('div', { class: 'images' }, images.map((src, i) => h('img', { src, alt: `Generated image ${i + 1} for: ${input.value}` }))));
    });
}

