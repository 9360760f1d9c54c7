// cellscope's page script: takes over the server-rendered index page (which works
// without it) for live cell switching, hover predictions, the heatmap, the cell
// finder, and the causal lab (clamping a cell, steered sampling). An ES module
// with no dependencies and no build step.
//
// Data flow: POST /api/view returns one layer of the trace as int8 (q = round(127·u),
// u ∈ [−1, 1] the colour value; row = character, column = cell). Choosing a kind or
// a cell only re-reads those bytes; choosing a layer or running new text fetches.
//
// Pasted text is untrusted. It reaches the DOM only through textContent or through
// `escapeChar` below; never through innerHTML as it is.

const KINDS = ['h', 'c', 'i', 'f', 'g', 'o'];
const GATES = new Set(['i', 'f', 'o']);
/** Above this many bytes (T × H × 6 kinds) only the current kind is fetched. */
const ALL_KINDS_MAX_BYTES = 16_000_000;
/** The heatmap's canvas is at most this wide; longer texts are averaged into columns. */
const HEATMAP_MAX_WIDTH = 4096;
const HASH_TEXT_MAX = 2000;
const TOP_K = 5;

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------------------
// Colours: the diverging map of the server (src/cli.rs `diverging_rgb`):
// −1 → (33, 102, 172), 0 → white, +1 → (178, 24, 43), linear through white.

function divergingRgb(u) {
  const v = Number.isFinite(u) ? Math.max(-1, Math.min(1, u)) : 0;
  const mix = (a, b, t) => Math.round(a + (b - a) * t);
  return v < 0
    ? [mix(255, 33, -v), mix(255, 102, -v), mix(255, 172, -v)]
    : [mix(255, 178, v), mix(255, 24, v), mix(255, 43, v)];
}

/** WCAG relative luminance of an sRGB colour. */
function relativeLuminance(r, g, b) {
  const lin = (x) => {
    const c = x / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/** Colours one span as the byte q: background and, where needed, light text. */
function paintSpan(span, q, before) {
  span.style.backgroundColor = CSS_COLORS[q + 128];
  const fg = TEXT_COLORS[q + 128];
  if (before > 127 || before < -128 || TEXT_COLORS[before + 128] !== fg) span.style.color = fg;
}

/** CSS colour for each q ∈ [−128, 127], indexed by q + 128. */
const CSS_COLORS = new Array(256);
/**
 * Text colour on each background: white where it contrasts more than the page's
 * near-black text (background luminance below ~0.21), else '' (the page's).
 */
const TEXT_COLORS = new Array(256);
/** The same colours as little-endian RGBA words, for ImageData. */
const RGBA_COLORS = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  const [r, g, b] = divergingRgb(Math.max(-127, i - 128) / 127);
  CSS_COLORS[i] = `rgb(${r}, ${g}, ${b})`;
  TEXT_COLORS[i] = relativeLuminance(r, g, b) < 0.21 ? '#fff' : '';
  RGBA_COLORS[i] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

/** The value shown for a stored byte: u for h, g and tanh(c); (u + 1)/2 for gates. */
function displayValue(kind, q) {
  const u = q / 127;
  return GATES.has(kind) ? (u + 1) / 2 : u;
}

/**
 * The colour byte for a raw value of `kind`, by the display rule of the view
 * (the server's): u = tanh(c) for c, 2v − 1 for the gates, v for h and g.
 */
function rawToQ(kind, v) {
  const u = kind === 'c' ? Math.tanh(v) : GATES.has(kind) ? 2 * v - 1 : v;
  return unitToQ(u);
}

/** The colour byte of u ∈ [−1, 1] (clipped; NaN → 0). */
function unitToQ(u) {
  return Number.isFinite(u) ? Math.round(127 * Math.max(-1, Math.min(1, u))) : 0;
}

function valueLabel(kind) {
  return kind === 'c' ? 'tanh(c)' : kind;
}

/** "+0.50" / "−0.25" with a true minus sign; `ascii` uses "-" (as the server's legend). */
function formatSigned(x, digits = 2, ascii = false) {
  const s = Math.abs(x).toFixed(digits);
  const neg = x < 0 && Number(s) !== 0;
  return (neg ? (ascii ? '-' : '−') : '+') + s;
}

// ---------------------------------------------------------------------------
// Text helpers.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
// C0 and C1 controls (Rust's char::is_control), except tab and newline.
const CONTROL = /^[\u0000-\u0008\u000b-\u001f\u007f-\u009f]$/;

/** How one character (a code point) appears inside its span. */
function shownChar(ch) {
  if (ch === '\n') return '\u21b5';
  if (CONTROL.test(ch)) return '\ufffd';
  return ch;
}

/** `shownChar`, escaped for HTML. */
function escapeChar(ch) {
  const s = shownChar(ch);
  return ESCAPES[s] ?? s;
}

/** The class of a character's span: newlines, tabs and spaces are drawn quietly (style.css). */
function charClass(ch) {
  if (ch === '\n') return 'ch nl';
  if (ch === '\t') return 'ch tab';
  if (ch === ' ') return 'ch sp';
  return 'ch';
}

/** A readable name for a character in the tooltip. */
function charName(ch) {
  switch (ch) {
    case ' ': return 'space';
    case '\n': return '\\n';
    case '\t': return '\\t';
    case '\r': return '\\r';
    case '\0': return 'NUL';
    default:
      if (CONTROL.test(ch)) return 'U+' + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
      return ch;
  }
}

/** Number of code points, as the server counts characters. */
function charCount(s) {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

// ---------------------------------------------------------------------------
// The API.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** POSTs JSON; retries a few times when the server says it is busy (503). */
async function post(url, body, { binary = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: binary ? 'application/octet-stream' : 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, 'network', `could not reach the server (${e.message})`);
    }
    if (res.ok) return binary ? res.arrayBuffer() : res.json();
    const err = await errorOf(res);
    if (await retryBusy(err, attempt)) continue;
    throw err;
  }
}

/** The ApiError a failed response carries (our JSON error, else its status line). */
async function errorOf(res) {
  let code = 'http_' + res.status;
  let message = `${res.status} ${res.statusText}`;
  try {
    const j = await res.json();
    if (j && j.error) {
      code = j.error.code || code;
      message = j.error.message || message;
    }
  } catch {
    /* not our JSON error; keep the status line */
  }
  return new ApiError(res.status, code, message);
}

/** Waits a little and answers true when `err` says the server is busy and a retry is left. */
async function retryBusy(err, attempt) {
  if (err.status !== 503 || err.code !== 'busy' || attempt >= 4) return false;
  await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
  return true;
}

/** POSTs JSON and answers the response, whose body the caller reads as a stream. */
async function postStream(url, body, signal) {
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' },
        body: JSON.stringify(body),
        signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', `could not reach the server (${e.message})`);
    }
    if (res.ok) return res;
    const err = await errorOf(res);
    if (await retryBusy(err, attempt)) continue;
    throw err;
  }
}

/** Parses /api/view's body: u32 LE header length, JSON header, then T×H int8 per kind. */
function parseView(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const size = header.length * header.hidden;
  const data = new Map();
  header.kinds.forEach((k, i) => data.set(k, new Int8Array(buf, 4 + n + i * size, size)));
  if (4 + n + header.kinds.length * size > buf.byteLength) {
    throw new ApiError(0, 'short_view', 'the server sent a truncated view; run again');
  }
  return { header, data };
}

// ---------------------------------------------------------------------------
// State.

const initialEl = $('#initial');
const initial = initialEl ? JSON.parse(initialEl.textContent) : null;

const el = {
  form: $('#run-form'),
  text: $('#text'),
  layer: $('#layer'),
  kind: $('#kind'),
  cell: $('#cell'),
  prev: $('#prev-cell'),
  next: $('#next-cell'),
  run: $('#run'),
  cellLink: $('#cell-link'),
  status: $('#status'),
  legend: $('#legend'),
  legendTitle: $('#legend-title'),
  colored: $('#colored'),
  tooltip: $('#tooltip'),
  heatmap: $('#heatmap'),
  heatmapSort: $('#heatmap-sort'),
  finderForm: $('#finder-form'),
  concept: $('#concept'),
  regex: $('#regex'),
  finderKinds: $('#finder-kinds'),
  rankSelection: $('#rank-selection'),
  results: $('#finder-results'),
  colourBy: $('#colour-by'),
  showCell: $('#show-cell'),
  showClamp: $('#show-clamp'),
  clampForm: $('#clamp-form'),
  clampTarget: $('#clamp-target'),
  clampValue: $('#clamp-value'),
  clampAblate: $('#clamp-ablate'),
  clampMin: $('#clamp-min'),
  clampMax: $('#clamp-max'),
  clampSlider: $('#clamp-slider'),
  clampSliderLabel: $('#clamp-slider-label'),
  clampScope: $('#clamp-scope'),
  clampScopeNote: $('#clamp-scope-note'),
  clampApply: $('#clamp-apply'),
  clampStatus: $('#clamp-status'),
  clampResult: $('#clamp-result'),
  clampCaption: $('#clamp-caption'),
  clampLoss: $('#clamp-loss'),
  clampScale: $('#clamp-scale'),
  clampAffected: $('#clamp-affected'),
  clampConcepts: $('#clamp-concepts'),
  sampleForm: $('#sample-form'),
  samplePrime: $('#sample-prime'),
  sampleLength: $('#sample-length'),
  sampleTemperature: $('#sample-temperature'),
  sampleSeed: $('#sample-seed'),
  sampleRun: $('#sample-run'),
  sampleStop: $('#sample-stop'),
  sampleStatus: $('#sample-status'),
  sampleSteered: $('#sample-steered'),
  samplePlain: $('#sample-plain'),
  sampleSteeredCaption: $('#sample-steered-caption'),
  samplePlainCaption: $('#sample-plain-caption'),
};

const state = {
  layers: initial?.layers ?? 1,
  hidden: initial?.hidden ?? 1,
  samples: initial?.samples ?? [],
  maxChars: initial?.max_text_chars ?? Infinity,
  layer: initial?.layer ?? 0,
  kind: initial?.kind ?? 'c',
  cell: initial?.cell ?? 0,
  /** The text the shown view was traced from. */
  text: null,
  /** The text of the latest view request (differs from `text` while a run is on its way). */
  requestedText: null,
  /** {layer, header, data: Map(kind → Int8Array), allKinds} */
  view: null,
  /** span per character, index = position */
  spans: [],
  /** q currently painted on each span (avoids needless style writes) */
  painted: null,
  /** [{layer, kind, cell}] from the last finder run, best first */
  ranking: [],
  rankingLabel: '',
  seq: 0,
  /** Completed view loads (the browser test waits on this). */
  runs: 0,
  pinned: -1,
  hoverT: -1,
  dragging: false,
  /** The causal lab: see "Clamping" below. */
  clamp: {
    /** 'cell' or 'clamp': what the text is coloured by. */
    colourBy: 'cell',
    /** The last intervention on the shown text: {text, target, value, ranges, answer, maxAbs}. */
    result: null,
    /** Exact values of the clamp target over the shown text: {key, kind, min, max, rms}. */
    stats: null,
    /** Whether the clamp panel is on screen (values are only fetched then). */
    panelVisible: false,
    statsKey: '',
    statsTimer: 0,
    seq: 0,
    /** Counts the texts shown, so that values read for one text are never used for another. */
    textId: 0,
    /** The last non-empty selection of the text, as [start, end) ranges. */
    selection: [],
    /** The character marked from the "most affected" list, or −1. */
    marked: -1,
  },
  /** The running pair of samples: an AbortController, or null. */
  sampling: null,
  /** Whether the prime was typed by the user (else it follows the text). */
  primeEdited: false,
};

/** Test and debugging hook: read-only view of timings and the current choice. */
const timings = {};
window.cellscope = Object.freeze({
  timings,
  get choice() {
    return { layer: state.layer, kind: state.kind, cell: state.cell };
  },
  get length() {
    return state.view ? state.view.header.length : 0;
  },
  get runs() {
    return state.runs;
  },
});

// ---------------------------------------------------------------------------
// Status line.

/** Writes a status line (the page's, the clamp panel's or the sampler's). */
function statusLine(line, msg, isError) {
  if (!line) return;
  line.textContent = msg;
  line.classList.toggle('error', isError);
  line.classList.toggle('muted', !isError);
}

function setStatus(msg, isError = false) {
  statusLine(el.status, msg, isError);
}

function showError(e) {
  const msg = e instanceof ApiError ? `error: ${e.message}` : `error: ${e && e.message ? e.message : e}`;
  setStatus(msg, true);
}

// ---------------------------------------------------------------------------
// Rendering the text.

function buildSpans(header) {
  const t0 = performance.now();
  const { chars, unknown } = header;
  const unk = new Set(unknown);
  const parts = new Array(chars.length);
  for (let t = 0; t < chars.length; t++) {
    const ch = chars[t];
    const cls = unk.has(t) ? charClass(ch) + ' unk' : charClass(ch);
    parts[t] = `<span class="${cls}" data-t="${t}">${escapeChar(ch)}</span>${ch === '\n' ? '\n' : ''}`;
  }
  el.colored.innerHTML = parts.join('');
  state.spans = Array.from(el.colored.children);
  state.painted = new Int16Array(chars.length).fill(999);
  updateUnknownNote(unknown.length);
  timings.build = performance.now() - t0;
}

function currentData() {
  const v = state.view;
  if (!v || v.layer !== state.layer) return null;
  return v.data.get(state.kind) ?? null;
}

/**
 * Sets every span's background from the current cell, or from the clamp's effect
 * when that is shown; touches only changed spans.
 */
function recolor() {
  if (showingClamp()) {
    recolorClamp();
    return;
  }
  const data = currentData();
  if (!data) return;
  const H = state.view.header.hidden;
  const cell = state.cell;
  paintText(Math.min(state.spans.length, data.length / H), (t) => data[t * H + cell], 'cell');
}

/** Paints span t as the byte qAt(t) for t < n, touching only changed spans; `colour` names what for tests. */
function paintText(n, qAt, colour) {
  const t0 = performance.now();
  const { spans, painted } = state;
  for (let t = 0; t < n; t++) {
    const q = qAt(t);
    if (painted[t] !== q) {
      paintSpan(spans[t], q, painted[t]);
      painted[t] = q;
    }
  }
  if (el.colored) el.colored.dataset.colour = colour;
  timings.recolor = performance.now() - t0;
}

function updateLegend() {
  if (showingClamp()) {
    updateClampLegend();
    return;
  }
  const opt = el.kind?.selectedOptions[0];
  const kindLabel = opt ? opt.textContent.split(' — ')[1] ?? state.kind : state.kind;
  if (el.legendTitle) el.legendTitle.textContent = `layer ${state.layer} · ${kindLabel} · cell ${state.cell}`;
  const stops = el.legend ? el.legend.querySelectorAll('.stop') : [];
  stops.forEach((s, i) => {
    const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
    paintStop(s, Math.round(u * 127));
    s.textContent = GATES.has(state.kind) ? ((u + 1) / 2).toFixed(2) : formatSigned(u, 2, true);
  });
}

/** A legend stop: its colour, with light text where the text's spans get it. */
function paintStop(stop, q) {
  stop.style.background = CSS_COLORS[q + 128];
  stop.style.color = TEXT_COLORS[q + 128];
}

function updateUnknownNote(count) {
  if (!el.legend) return;
  let note = el.legend.querySelector('.unk-note');
  if (count === 0) {
    note?.remove();
    return;
  }
  if (!note) {
    note = document.createElement('span');
    note.className = 'unk-note';
    el.legend.append(note);
  }
  const mark = document.createElement('span');
  mark.className = 'ch unk';
  mark.textContent = '?';
  note.replaceChildren(mark, ` ${count} characters not in the vocabulary (fed as zero input)`);
}

function updateControls() {
  if (el.layer) el.layer.value = String(state.layer);
  if (el.kind) el.kind.value = state.kind;
  if (el.cell && document.activeElement !== el.cell) el.cell.value = String(state.cell);
  if (el.cell) el.cell.max = String(state.hidden - 1);
  if (el.cellLink) el.cellLink.href = `/cell/${state.layer}/${state.kind}/${state.cell}`;
  updateLegend();
  updateClampTarget();
}

// ---------------------------------------------------------------------------
// The URL keeps the choice: #layer=1&kind=c&cell=42[&sample=c | &text=...]

function sampleIdFor(text) {
  return state.samples.find((s) => s.text === text)?.id ?? null;
}

let hashTimer = 0;

/**
 * Updates the hash a moment after the last change: replaceState can make the
 * browser restyle the page at once (`:target`), which right after recolouring
 * 20,000 spans costs as much as the recolouring; holding an arrow key should not.
 */
function scheduleHash() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(writeHash, 150);
}

function writeHash() {
  clearTimeout(hashTimer);
  let h = `#layer=${state.layer}&kind=${state.kind}&cell=${state.cell}`;
  if (state.text != null) {
    const sample = sampleIdFor(state.text);
    if (sample) h += `&sample=${encodeURIComponent(sample)}`;
    else if (state.text.length <= HASH_TEXT_MAX) h += `&text=${encodeURIComponent(state.text)}`;
  }
  if (location.hash !== h) history.replaceState(null, '', h);
}

function readHash() {
  const out = {};
  const h = location.hash.replace(/^#/, '');
  if (!h) return out;
  for (const part of h.split('&')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    try {
      out[part.slice(0, i)] = decodeURIComponent(part.slice(i + 1));
    } catch {
      /* a malformed escape: ignore that part */
    }
  }
  return out;
}

/** Applies layer/kind/cell from the hash to the state (no fetch); returns the text it names, if any. */
function applyHash(h) {
  const layer = parseInt(h.layer, 10);
  if (Number.isInteger(layer) && layer >= 0 && layer < state.layers) state.layer = layer;
  if (KINDS.includes(h.kind)) state.kind = h.kind;
  const cell = parseInt(h.cell, 10);
  if (Number.isInteger(cell)) state.cell = clampCell(cell);
  if (h.text != null) return h.text;
  if (h.sample != null) return state.samples.find((s) => s.id === h.sample)?.text ?? null;
  return null;
}

// ---------------------------------------------------------------------------
// Fetching views.

function wantsAllKinds(text) {
  return charCount(text) * state.hidden * KINDS.length <= ALL_KINDS_MAX_BYTES;
}

/** Fetches the view of `text` at the current layer; rebuilds spans when the text is new. */
async function loadView(text) {
  const n = charCount(text);
  if (n > state.maxChars) {
    setStatus(`error: text has ${n} characters; this server accepts at most ${state.maxChars}`, true);
    return;
  }
  const seq = ++state.seq;
  state.requestedText = text;
  const layer = state.layer;
  const allKinds = wantsAllKinds(text);
  const kinds = allKinds ? KINDS : [state.kind];
  setStatus(`tracing ${n} characters…`);
  const t0 = performance.now();
  let view;
  try {
    const buf = await post('/api/view', { text, layer, kinds, top_k: TOP_K }, { binary: true });
    view = parseView(buf);
  } catch (e) {
    if (seq === state.seq) {
      state.requestedText = state.text; // layer and kind changes go on with the shown text
      showError(e);
    }
    return;
  }
  if (seq !== state.seq) return; // a newer request superseded this one
  const fetched = performance.now() - t0;
  timings.fetch = fetched;
  const newText = text !== state.text || !state.view || state.view.header.length !== view.header.length;
  state.view = { layer, header: view.header, data: view.data, allKinds };
  state.hidden = view.header.hidden;
  state.text = text;
  if (newText) {
    hideTooltip();
    buildSpans(view.header);
    $('#error')?.remove();
    clampTextChanged(text);
  }
  recolor();
  drawHeatmap();
  updateControls();
  writeHash();
  timings.total = performance.now() - t0;
  state.runs++;
  setStatus(`traced ${view.header.length} characters in ${Math.round(fetched)} ms` +
    (allKinds ? '' : ` (long text: kind ${kinds[0]} only)`));
  // The layer or kind may have changed while the request was on its way.
  if (state.layer !== layer || !view.data.has(state.kind)) refresh();
}

/** Makes sure the current layer and kind are loaded, then shows them. */
async function refresh() {
  updateControls();
  const v = state.view;
  const text = state.requestedText ?? state.text;
  if (text == null) return; // nothing run yet
  if (text !== state.text || !v || v.layer !== state.layer || !v.data.has(state.kind)) {
    await loadView(text);
    return;
  }
  recolor();
  drawHeatmap();
  refreshTooltip();
  scheduleHash();
}

function run() {
  const text = el.text ? el.text.value : '';
  return loadView(text);
}

// ---------------------------------------------------------------------------
// Choosing layer, kind and cell.

function clampCell(c) {
  return Math.max(0, Math.min(state.hidden - 1, c | 0));
}

/** Picks a cell of the loaded layer/kind: no round trip. */
function setCell(c) {
  leaveClampView();
  state.cell = clampCell(c);
  updateControls();
  recolor();
  moveHeatmapMarker();
  refreshTooltip();
  scheduleHash();
}

function stepCell(delta) {
  const H = state.hidden;
  setCell((((state.cell + delta) % H) + H) % H);
}

function choose({ layer = state.layer, kind = state.kind, cell = state.cell }) {
  leaveClampView();
  const heatmapStale = layer !== state.layer || kind !== state.kind;
  state.layer = layer;
  state.kind = kind;
  state.cell = clampCell(cell);
  if (!heatmapStale) {
    setCell(state.cell);
    return Promise.resolve();
  }
  return refresh();
}

// ---------------------------------------------------------------------------
// Tooltip.

function hideTooltip() {
  state.pinned = -1;
  state.hoverT = -1;
  if (el.tooltip) {
    el.tooltip.hidden = true;
    el.tooltip.classList.remove('pinned');
  }
}

function spanOf(target) {
  const s = target instanceof Element ? target.closest('.ch') : null;
  return s && el.colored.contains(s) ? s : null;
}

function showTooltip(span, place = true) {
  const t = Number(span.dataset.t);
  state.hoverT = t;
  const tip = el.tooltip;
  if (!tip) return;
  tip.replaceChildren(...tooltipContent(t));
  tip.hidden = false;
  if (place) placeTooltip(span);
}

/** New content for the shown tooltip after a cell change; not re-placed, as that reads layout. */
function refreshTooltip() {
  if (!el.tooltip || el.tooltip.hidden || state.hoverT < 0) return;
  const span = state.spans[state.hoverT];
  if (span) showTooltip(span, false);
}

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text != null) n.textContent = text;
  return n;
}

function tooltipContent(t) {
  const out = [];
  const header = state.view?.header;
  const ch = header ? header.chars[t] : state.spans[t]?.textContent ?? '';
  const head = node('div', 'tt-head');
  head.append(node('code', 'tt-char', charName(ch)), node('span', 'muted', ` position ${t}`));
  if (header && header.unknown.includes(t)) head.append(node('span', 'tt-unk', ' not in vocabulary'));
  out.push(head);
  const data = currentData();
  if (!data || !header) {
    out.push(node('div', 'muted', 'loading…'));
    return out;
  }
  const q = data[t * header.hidden + state.cell];
  const v = displayValue(state.kind, q);
  const val = node('div', 'tt-val');
  const sw = node('span', 'tt-swatch');
  sw.style.background = CSS_COLORS[q + 128];
  val.append(sw, `layer ${state.layer} · cell ${state.cell}: ${valueLabel(state.kind)} = `,
    node('b', null, GATES.has(state.kind) ? v.toFixed(3) : formatSigned(v, 3)));
  out.push(val);
  if (showingClamp()) out.push(clampTooltipLine(t));

  const pred = header.predictions?.[t];
  if (pred) {
    out.push(node('div', 'tt-sub muted', 'next-character guesses'));
    const list = node('ol', 'tt-preds');
    let actualShown = false;
    for (const { char, p } of pred.top) {
      const actual = pred.next != null && char === pred.next;
      actualShown ||= actual;
      list.append(predRow(char, p, actual));
    }
    out.push(list);
    if (pred.next == null) {
      out.push(node('div', 'tt-next muted', 'end of text'));
    } else if (!actualShown) {
      const row = node('div', 'tt-next');
      if (pred.p_next == null) {
        row.append('actual next ', node('code', null, charName(pred.next)), ' is not in the vocabulary');
      } else {
        const l = node('ol', 'tt-preds');
        l.append(predRow(pred.next, pred.p_next, true));
        row.append(node('span', 'muted', 'actual next:'), l);
      }
      out.push(row);
    }
  }
  return out;
}

function predRow(char, p, actual) {
  const li = node('li', actual ? 'actual' : null);
  const bar = node('span', 'bar');
  const fill = node('span', 'fill');
  fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
  bar.append(fill);
  li.append(node('code', 'pc', charName(char)), bar, node('span', 'pp', p.toFixed(3)));
  if (actual) li.title = 'the character that actually follows';
  return li;
}

function placeTooltip(span) {
  const tip = el.tooltip;
  const r = span.getBoundingClientRect();
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  const vw = document.documentElement.clientWidth;
  const vh = document.documentElement.clientHeight;
  let left = Math.min(r.left, vw - w - 8);
  let top = r.bottom + 6;
  if (top + h > vh - 4 && r.top - h - 6 > 0) top = r.top - h - 6;
  tip.style.left = `${Math.max(4, left)}px`;
  tip.style.top = `${Math.max(4, top)}px`;
}

// ---------------------------------------------------------------------------
// Heatmap: rows = cells of the chosen kind, columns = characters.

const heat = { order: null, rowOf: null, rowH: 1, colW: 1, width: 0, height: 0, perCol: 1, key: '' };

function activityOrder(data, T, H) {
  const sum = new Float64Array(H);
  const sq = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    const base = t * H;
    for (let c = 0; c < H; c++) {
      const q = data[base + c];
      sum[c] += q;
      sq[c] += q * q;
    }
  }
  const variance = new Float64Array(H);
  for (let c = 0; c < H; c++) {
    const m = sum[c] / T;
    variance[c] = sq[c] / T - m * m;
  }
  return Array.from({ length: H }, (_, c) => c).sort((a, b) => variance[b] - variance[a] || a - b);
}

function rankOrder(H) {
  const seen = new Set();
  const order = [];
  for (const r of state.ranking) {
    if (r.layer === state.layer && r.kind === state.kind && r.cell < H && !seen.has(r.cell)) {
      seen.add(r.cell);
      order.push(r.cell);
    }
  }
  const ranked = order.length;
  for (let c = 0; c < H; c++) if (!seen.has(c)) order.push(c);
  return { order, ranked };
}

function heatmapNote(text) {
  const wrap = el.heatmap?.parentElement;
  if (!wrap) return;
  let note = document.getElementById('heatmap-note');
  if (!note) {
    note = node('p', 'muted heatmap-note');
    note.id = 'heatmap-note';
    wrap.after(note);
  }
  note.textContent = text;
}

function drawHeatmap() {
  const canvas = el.heatmap;
  const data = currentData();
  if (!canvas || !data) return;
  const t0 = performance.now();
  const { length: T, hidden: H } = state.view.header;
  const sort = el.heatmapSort ? el.heatmapSort.value : 'index';
  let order;
  let note = '';
  if (sort === 'activity') {
    order = activityOrder(data, T, H);
    note = 'rows sorted by variance over the text, most active first';
  } else if (sort === 'rank') {
    const r = rankOrder(H);
    order = r.order;
    note = r.ranked
      ? `first ${r.ranked} rows: the last ranking (${state.rankingLabel}) for layer ${state.layer} · ${state.kind}; then by index`
      : `no ranking for layer ${state.layer} · ${state.kind} yet: run "Rank cells"; rows by index`;
  } else {
    order = Array.from({ length: H }, (_, c) => c);
  }
  const rowOf = new Int32Array(H);
  order.forEach((c, r) => (rowOf[c] = r));

  const rowH = Math.max(1, Math.min(12, Math.floor(384 / H)));
  const colW = T > 0 ? Math.max(1, Math.min(6, Math.floor(1200 / T))) : 1;
  const cols = Math.min(T, HEATMAP_MAX_WIDTH);
  const width = Math.max(1, cols * colW);
  const height = H * rowH;
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(width, height);
  const px = new Uint32Array(img.data.buffer);

  if (T <= HEATMAP_MAX_WIDTH) {
    // One column (colW px) per character: read rows of H contiguous bytes.
    for (let t = 0; t < T; t++) {
      const base = t * H;
      const x0 = t * colW;
      for (let c = 0; c < H; c++) {
        const color = RGBA_COLORS[data[base + c] + 128];
        let i = rowOf[c] * rowH * width + x0;
        for (let k = 0; k < colW; k++) px[i + k] = color;
      }
    }
  } else {
    // Average the characters falling into each column.
    const acc = new Float64Array(H);
    for (let x = 0; x < cols; x++) {
      const a = Math.floor((x * T) / cols);
      const b = Math.floor(((x + 1) * T) / cols);
      acc.fill(0);
      for (let t = a; t < b; t++) {
        const base = t * H;
        for (let c = 0; c < H; c++) acc[c] += data[base + c];
      }
      const inv = 1 / (b - a);
      for (let c = 0; c < H; c++) px[rowOf[c] * rowH * width + x] = RGBA_COLORS[Math.round(acc[c] * inv) + 128];
    }
  }
  if (rowH > 1) {
    for (let r = 0; r < H; r++) {
      const src = r * rowH * width;
      for (let k = 1; k < rowH; k++) px.copyWithin(src + k * width, src, src + width);
    }
  }
  ctx.putImageData(img, 0, 0);
  Object.assign(heat, { order, rowOf, rowH, colW, width, height, perCol: T > HEATMAP_MAX_WIDTH ? T / cols : 1 / colW });
  const scale = T > HEATMAP_MAX_WIDTH ? ` · each column averages ${(T / cols).toFixed(1)} characters` : '';
  heatmapNote(`${H} cells × ${T} characters${scale}${note ? ' · ' + note : ''}`);
  moveHeatmapMarker();
  timings.heatmap = performance.now() - t0;
}

// The heatmap wrapper's scroll box, kept from events so that moving the marker
// never reads layout (a read right after recolouring 20,000 spans would force a
// synchronous style and layout pass).
const heatBox = { scrollTop: 0, clientHeight: 0 };

function moveHeatmapMarker() {
  const canvas = el.heatmap;
  if (!canvas || !heat.rowOf) return;
  const wrap = canvas.parentElement;
  let marker = wrap.querySelector('.hm-marker');
  if (!marker) {
    marker = node('div', 'hm-marker');
    marker.setAttribute('aria-hidden', 'true');
    wrap.append(marker);
  }
  // The canvas is the wrapper's first, block-level child: its rows start at y = 0.
  const top = (heat.rowOf[state.cell] ?? 0) * heat.rowH;
  marker.style.top = `${top}px`;
  marker.style.width = `${heat.width}px`;
  marker.style.height = `${heat.rowH}px`;
  marker.dataset.cell = String(state.cell);
  // Keep the marked row in view when the wrapper scrolls vertically.
  const { scrollTop, clientHeight } = heatBox;
  if (clientHeight > 0 && (top < scrollTop || top + heat.rowH > scrollTop + clientHeight)) {
    wrap.scrollTop = Math.max(0, top - clientHeight / 2);
  }
}

function watchHeatmapBox() {
  const wrap = el.heatmap?.parentElement;
  if (!wrap) return;
  wrap.addEventListener('scroll', () => (heatBox.scrollTop = wrap.scrollTop), { passive: true });
  if ('ResizeObserver' in window) {
    new ResizeObserver((entries) => {
      for (const e of entries) heatBox.clientHeight = e.target.clientHeight;
    }).observe(wrap);
  }
}

function heatmapHit(ev) {
  const canvas = el.heatmap;
  const r = canvas.getBoundingClientRect();
  const x = ((ev.clientX - r.left) * canvas.width) / r.width;
  const y = ((ev.clientY - r.top) * canvas.height) / r.height;
  const row = Math.floor(y / heat.rowH);
  if (!heat.order || row < 0 || row >= heat.order.length) return null;
  const t = Math.floor(x * heat.perCol);
  return { cell: heat.order[row], t };
}

// ---------------------------------------------------------------------------
// Finder.

function finderKinds() {
  const v = el.finderKinds ? el.finderKinds.value : 'all';
  return v === 'all' ? KINDS : v.split(',');
}

const METRIC_LABEL = { auc: 'AUC', pearson: 'r', spearman: 'ρ' };

async function rank(request, label) {
  if (state.text == null) {
    setStatus('run the text first', true);
    return;
  }
  const body = { text: state.text, kinds: finderKinds(), top_k: 20, ...request };
  setStatus(`ranking cells for ${label}…`);
  el.results?.setAttribute('aria-busy', 'true');
  const t0 = performance.now();
  let res;
  try {
    res = await post('/api/cells/rank', body);
  } catch (e) {
    showError(e);
    el.results?.removeAttribute('aria-busy');
    return;
  }
  el.results?.removeAttribute('aria-busy');
  state.ranking = res.cells.map(({ layer, kind, cell }) => ({ layer, kind, cell }));
  state.rankingLabel = label;
  showResults(res);
  if (el.heatmapSort?.value === 'rank') drawHeatmap();
  setStatus(`ranked cells for ${label} in ${Math.round(performance.now() - t0)} ms`);
}

function showResults(res) {
  const list = el.results;
  if (!list) return;
  const metric = METRIC_LABEL[res.metric] ?? res.metric;
  const items = res.cells.map((c) => {
    const li = node('li');
    const sign = c.sign > 0 ? '+' : c.sign < 0 ? '−' : '±';
    const pick = node('a', 'rank-pick', `layer ${c.layer} · ${c.kind} · cell ${c.cell} — ${metric} ${c.score.toFixed(3)} (${sign})`);
    pick.href = `#layer=${c.layer}&kind=${c.kind}&cell=${c.cell}`;
    pick.dataset.layer = c.layer;
    pick.dataset.kind = c.kind;
    pick.dataset.cell = c.cell;
    pick.title = `colour the text by this cell (signed ${metric} ${c.raw.toFixed(3)})`;
    const page = node('a', 'cellpage', 'cell page');
    page.href = `/cell/${c.layer}/${c.kind}/${c.cell}`;
    li.append(pick, ' ', page);
    return li;
  });
  if (items.length === 0) items.push(node('li', 'muted', 'no cells'));
  list.replaceChildren(...items);
  let cap = document.getElementById('finder-caption');
  if (!cap) {
    cap = node('p', 'muted finder-caption');
    cap.id = 'finder-caption';
    list.before(cap);
  }
  const what = res.feature === 'spans' ? 'the selected characters' : res.feature;
  cap.textContent = `best ${res.cells.length} cells for ${what}, by ${metric}; (+) = higher where it holds. Click to colour the text.`;
  cap.dataset.feature = res.feature;
}

/** The span at a selection boundary: the first selected one (start) or the last (end). */
function boundarySpan(container, offset, isStart) {
  const pre = el.colored;
  const step = (s) => (isStart ? s?.nextElementSibling : s?.previousElementSibling) ?? null;
  if (!pre.contains(container)) {
    // The boundary lies outside the text: the selection starts before or ends after it.
    const pos = container.compareDocumentPosition(pre);
    const preFollows = Boolean(pos & Node.DOCUMENT_POSITION_FOLLOWING);
    if (isStart) return preFollows ? pre.firstElementChild : null;
    return preFollows ? null : pre.lastElementChild;
  }
  if (container.nodeType === Node.TEXT_NODE) {
    const parent = container.parentElement;
    if (parent && parent !== pre && parent.classList.contains('ch')) {
      if (isStart) return offset >= container.length ? step(parent) : parent;
      return offset === 0 ? step(parent) : parent;
    }
    // A "\n" text node between spans.
    return isStart ? container.nextElementSibling : container.previousElementSibling;
  }
  if (container === pre) {
    if (isStart) {
      const child = pre.childNodes[offset];
      if (!child) return null;
      return child.nodeType === Node.ELEMENT_NODE ? child : child.nextElementSibling;
    }
    const child = pre.childNodes[offset - 1];
    if (!child) return null;
    return child.nodeType === Node.ELEMENT_NODE ? child : child.previousElementSibling;
  }
  const span = container.closest('.ch');
  if (!span) return null;
  if (isStart) return offset === 0 ? span : step(span);
  return offset === 0 ? step(span) : span;
}

/** Character index ranges [start, end) covered by the current selection in the text. */
function selectionSpans() {
  const sel = window.getSelection();
  const out = [];
  if (!sel || sel.isCollapsed) return out;
  for (let i = 0; i < sel.rangeCount; i++) {
    const r = sel.getRangeAt(i);
    if (!r.intersectsNode(el.colored)) continue;
    const a = boundarySpan(r.startContainer, r.startOffset, true);
    const b = boundarySpan(r.endContainer, r.endOffset, false);
    if (!a || !b) continue;
    const s = Number(a.dataset.t);
    const e = Number(b.dataset.t) + 1;
    if (e > s) out.push([s, e]);
  }
  out.sort((x, y) => x[0] - y[0]);
  // Merge overlapping ranges.
  const merged = [];
  for (const r of out) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push(r);
  }
  return merged;
}

// ---------------------------------------------------------------------------
// Clamping: hold one cell at a value (POST /api/intervene) and colour the text by
// how much more or less likely the clamped model found each character.
//
// delta[t] = ln p_clamped(text[t+1] | text[..=t]) − ln p_base(the same): it is about
// character t + 1, so that character is painted with delta[t]; the first character
// is not predicted and stays white. Blue: the clamp made the actual text less likely.

/** Clamps hold h or c; a view of a gate or of g clamps the c of the same cell. */
function clampTarget() {
  const kind = state.kind === 'h' ? 'h' : 'c';
  return { layer: state.layer, kind, cell: state.cell, viaKind: kind === state.kind ? null : state.kind };
}

/** "c of layer 1 · cell 42" */
const targetLabel = (t) => `${t.kind} of layer ${t.layer} · cell ${t.cell}`;

/** A number as typed into the value field: up to 4 significant digits. */
const shortNumber = (x) => String(Number(x.toPrecision(4)));

function kindName(k) {
  const opt = el.kind?.querySelector(`option[value="${k}"]`);
  return opt ? opt.textContent.split(' — ')[1] ?? k : k;
}

/** Whether the text is coloured by the clamp's effect (only ever for the text it was run on). */
function showingClamp() {
  const c = state.clamp;
  return c.colourBy === 'clamp' && c.result != null && c.result.text === state.text;
}

function setClampStatus(msg, isError = false) {
  statusLine(el.clampStatus, msg, isError);
}

function updateClampTarget() {
  if (!el.clampTarget) return;
  const t = clampTarget();
  const what = t.kind === 'c' ? 'the memory c (raw, before tanh)' : 'the output h';
  let msg = `Holds ${what} of layer ${t.layer} · cell ${t.cell} at a value and shows how the prediction of every next character changes.`;
  if (t.viaKind) msg += ` The view shows the ${kindName(t.viaKind)}, which cannot be held: the clamp holds c of the same cell.`;
  el.clampTarget.textContent = msg;
  scheduleStats();
}

/** A new text is shown: results, the selection and the cell's values belong to the old one. */
function clampTextChanged(text) {
  const c = state.clamp;
  c.textId++;
  c.selection = [];
  c.marked = -1;
  c.seq++; // an intervention on its way is about the old text
  if (el.clampApply) el.clampApply.disabled = false;
  if (c.result) setClampStatus('the text changed: apply the clamp again to see its effect on this text');
  c.result = null;
  c.colourBy = 'cell';
  showClampResult();
  syncColourBy();
  showScopeNote();
  defaultPrime(text);
}

// The cell's exact values over the text (the view holds int8 display values, and
// tanh hides the size of c), for the min/max presets and the slider's unit.

function statsKey() {
  const t = clampTarget();
  return `${state.clamp.textId}:${t.layer}/${t.kind}/${t.cell}`;
}

/**
 * Fetches the target's values a moment after the choice settles (holding → only
 * fetches once), and only while the panel is on screen: each fetch traces the whole
 * text again, which for a long text stepped through cell by cell adds up.
 */
function scheduleStats() {
  const c = state.clamp;
  if (state.text == null) return;
  const key = statsKey();
  if (c.statsKey === key) return; // loaded or on its way
  clearTimeout(c.statsTimer);
  c.statsKey = '';
  c.stats = null;
  showStats();
  if (!c.panelVisible) return; // the observer in wire() calls again
  c.statsKey = key;
  c.statsTimer = setTimeout(() => loadStats(key), 300);
}

async function loadStats(key) {
  const c = state.clamp;
  if (c.statsKey !== key) return;
  const t = clampTarget();
  let res;
  try {
    res = await post('/api/trace', { text: state.text, layers: [t.layer], kinds: [t.kind], cells: [t.cell], top_k: 0 });
  } catch (e) {
    if (c.statsKey === key) {
      c.statsKey = ''; // try again on the next change
      setClampStatus(`error: could not read the cell's values (${e.message})`, true);
    }
    return;
  }
  if (c.statsKey !== key) return;
  let min = Infinity;
  let max = -Infinity;
  let sq = 0;
  const rows = res.layers[0][t.kind];
  for (const [v] of rows) {
    if (v < min) min = v;
    if (v > max) max = v;
    sq += v * v;
  }
  c.stats = rows.length ? { key, kind: t.kind, min, max, rms: Math.sqrt(sq / rows.length) } : null;
  showStats();
}

function showStats() {
  const st = state.clamp.stats;
  for (const [b, name] of [[el.clampMin, 'min'], [el.clampMax, 'max']]) {
    if (!b) continue;
    const v = st ? st[name] : null;
    b.disabled = v == null;
    b.dataset.value = v == null ? '' : String(v);
    b.textContent = v == null ? name : `${name} ${formatSigned(v, 3)}`;
  }
  if (el.clampSlider) el.clampSlider.disabled = !(st && st.rms > 0);
  syncSlider();
}

function setClampValue(v) {
  if (!el.clampValue || !Number.isFinite(v)) return;
  el.clampValue.value = shortNumber(v);
  syncSlider();
}

/** The slider moves in units of the cell's root-mean-square value over the text. */
function sliderMoved() {
  const st = state.clamp.stats;
  if (!st || !(st.rms > 0) || !el.clampValue) return;
  el.clampValue.value = shortNumber(Number(el.clampSlider.value) * st.rms);
  syncSlider(false);
}

function syncSlider(moveThumb = true) {
  const st = state.clamp.stats;
  const label = el.clampSliderLabel;
  if (!st || !(st.rms > 0)) {
    if (label) label.textContent = state.text == null ? '' : 'reading the cell\u2019s values over the text…';
    return;
  }
  const v = Number(el.clampValue?.value);
  const k = Number.isFinite(v) ? v / st.rms : 0;
  if (moveThumb && el.clampSlider) el.clampSlider.value = String(Math.max(-5, Math.min(5, k)));
  if (label) {
    label.textContent = `${formatSigned(k, 2)} × rms (the rms of ${st.kind} over the text is ${st.rms.toFixed(3)})`;
  }
}

// Scope: the whole text, or the last selection made in it.

function describeRanges(ranges) {
  const n = ranges.reduce((a, [s, e]) => a + e - s, 0);
  if (ranges.length === 1) return `characters ${ranges[0][0]}–${ranges[0][1] - 1} (${n})`;
  return `${ranges.length} ranges, ${n} characters`;
}

function showScopeNote() {
  if (!el.clampScopeNote) return;
  const sel = state.clamp.selection;
  if (el.clampScope?.value !== 'selection') el.clampScopeNote.textContent = '';
  else el.clampScopeNote.textContent = sel.length ? describeRanges(sel) : 'select characters of the text above first';
}

async function applyClamp() {
  const c = state.clamp;
  const text = state.text;
  if (text == null || !state.view) {
    setClampStatus('run the text first', true);
    return;
  }
  const raw = el.clampValue ? el.clampValue.value.trim() : '';
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value)) {
    setClampStatus('type the number to hold the cell at', true);
    el.clampValue?.focus();
    return;
  }
  const T = state.view.header.length;
  const whole = el.clampScope?.value !== 'selection';
  const ranges = whole ? [[0, T]] : c.selection;
  if (ranges.length === 0) {
    setClampStatus('select characters of the text first, or clamp over the whole text', true);
    return;
  }
  const target = clampTarget();
  const { layer, kind, cell } = target;
  const clamps = ranges.map(([from, to]) => (whole ? { layer, kind, cell, value } : { layer, kind, cell, value, from, to }));
  const seq = ++c.seq;
  setClampStatus(`running ${T} characters with and without the clamp…`);
  if (el.clampApply) el.clampApply.disabled = true;
  const t0 = performance.now();
  let answer;
  try {
    answer = await post('/api/intervene', { text, clamps });
  } catch (e) {
    if (seq === c.seq) setClampStatus(`error: ${e.message}`, true);
    return;
  } finally {
    if (seq === c.seq && el.clampApply) el.clampApply.disabled = false;
  }
  if (seq !== c.seq || text !== state.text) return; // the text changed meanwhile
  let maxAbs = 0;
  for (const d of answer.delta) if (d != null && Math.abs(d) > maxAbs) maxAbs = Math.abs(d);
  c.result = { text, target, value, ranges: whole ? null : ranges, answer, maxAbs };
  showClampResult();
  setColourBy('clamp');
  setClampStatus(`ran twice in ${Math.round(performance.now() - t0)} ms; the text above shows the effect`);
}

/** Half-width of the colour scale, in nats. */
function clampScale() {
  const v = el.clampScale ? el.clampScale.value : 'max';
  if (v === 'max') return Math.max(state.clamp.result?.maxAbs ?? 0, 1e-3);
  return Number(v);
}

function recolorClamp() {
  const delta = state.clamp.result.answer.delta;
  const S = clampScale();
  paintText(state.spans.length, (t) => (t > 0 && delta[t - 1] != null ? unitToQ(delta[t - 1] / S) : 0), 'clamp');
}

function updateClampLegend() {
  const r = state.clamp.result;
  const S = clampScale();
  if (el.legendTitle) {
    el.legendTitle.textContent = `clamp effect (${targetLabel(r.target)} = ${shortNumber(r.value)}): ` +
      `Δ ln p of each character, ±${S.toFixed(2)} nats`;
    el.legendTitle.title = 'each character is coloured by the change in the log-probability the model gave it ' +
      '(delta[t] paints character t + 1); blue: less likely with the clamp, red: more likely';
  }
  const stops = el.legend ? el.legend.querySelectorAll('.stop') : [];
  stops.forEach((s, i) => {
    const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
    paintStop(s, unitToQ(u));
    s.textContent = formatSigned(u * S, 2, true);
  });
  if (el.legend) el.legend.dataset.colour = 'clamp';
}

function setColourBy(mode) {
  state.clamp.colourBy = mode;
  syncColourBy();
  if (el.legendTitle && !showingClamp()) el.legendTitle.removeAttribute('title');
  if (el.legend && !showingClamp()) el.legend.dataset.colour = 'cell';
  recolor();
  updateLegend();
  refreshTooltip();
}

function syncColourBy() {
  const c = state.clamp;
  if (el.colourBy) el.colourBy.hidden = !(c.result && c.result.text === state.text);
  if (el.showCell) el.showCell.checked = !showingClamp();
  if (el.showClamp) el.showClamp.checked = showingClamp();
}

/** Choosing another cell shows cells again (the result stays, one click away). */
function leaveClampView() {
  if (state.clamp.colourBy !== 'clamp') return;
  state.clamp.colourBy = 'cell';
  syncColourBy();
  el.legendTitle?.removeAttribute('title');
  if (el.legend) el.legend.dataset.colour = 'cell';
}

function swatch(q) {
  const sw = node('span', 'tt-swatch');
  sw.style.background = CSS_COLORS[q + 128];
  return sw;
}

function showClampResult() {
  const r = state.clamp.result;
  if (!el.clampResult) return;
  el.clampResult.hidden = r == null;
  if (!r) {
    el.clampAffected?.replaceChildren();
    el.clampConcepts?.tBodies[0]?.replaceChildren();
    return;
  }
  const a = r.answer;
  const first = [...r.text].slice(0, 40).join('').replace(/\s+/g, ' ');
  const where = r.ranges ? describeRanges(r.ranges) : 'the whole text';
  if (el.clampCaption) {
    el.clampCaption.textContent = `${targetLabel(r.target)} held at ${shortNumber(r.value)} over ${where}, ` +
      `on the shown text (${a.length} characters: “${first}${a.length > 40 ? '…' : ''}”). ` +
      'Colours: the change in ln p of each character (delta[t] paints character t + 1); blue = less likely with the clamp.';
  }
  if (el.clampLoss) {
    const lb = a.loss_base;
    const lc = a.loss_clamped;
    el.clampLoss.replaceChildren();
    if (lb == null || lc == null) {
      el.clampLoss.textContent = 'no character of this text could be scored';
      delete el.clampLoss.dataset.change;
    } else {
      const d = lc - lb;
      el.clampLoss.append('Loss ', node('b', null, `${formatSigned(d, 4)} nats/char`),
        ` (${lb.toFixed(4)} without the clamp → ${lc.toFixed(4)} with it): the clamp made the text ` +
        `${d > 0 ? 'more surprising' : d < 0 ? 'less surprising' : 'no more surprising'}.`);
      el.clampLoss.dataset.change = String(d);
    }
  }
  if (el.clampAffected) {
    const S = clampScale();
    el.clampAffected.replaceChildren(...a.most_affected.map((m) => {
      const li = node('li');
      const b = node('button', 'affected-pick');
      b.type = 'button';
      b.dataset.t = String(m.position + 1);
      b.title = `show character ${m.position + 1} in the text`;
      b.append(swatch(unitToQ(m.delta / S)), node('code', null, charName(m.next)), ' after ', node('code', null, charName(m.char)),
        ` at ${m.position + 1}: `, node('b', null, formatSigned(m.delta, 2)), ` nats (p × ${Math.exp(m.delta).toPrecision(2)})`);
      li.append(b);
      return li;
    }));
  }
  const body = el.clampConcepts?.tBodies[0];
  if (body) {
    // The concept whose characters the clamp changed most, against the rest, first.
    const gap = (c) => (c.mean_delta == null || c.mean_delta_others == null ? -1 : Math.abs(c.mean_delta - c.mean_delta_others));
    const rows = a.concepts.slice().sort((x, y) => gap(y) - gap(x));
    const fmt = (x) => (x == null ? '—' : formatSigned(x, 3));
    body.replaceChildren(...rows.map((c) => {
      const tr = node('tr');
      tr.dataset.concept = c.concept;
      tr.append(node('th', null, c.concept), node('td', null, String(c.chars)), node('td', null, fmt(c.mean_delta)),
        node('td', null, fmt(c.mean_delta_others)));
      tr.cells[0].scope = 'row';
      return tr;
    }));
  }
}

/** Scrolls to character t of the text and flashes it. */
function markChar(t) {
  const span = state.spans[t];
  if (!span) return;
  const c = state.clamp;
  state.spans[c.marked]?.classList.remove('marked', 'flash');
  c.marked = t;
  span.classList.add('marked', 'flash');
  span.addEventListener('animationend', () => span.classList.remove('flash'), { once: true });
  span.scrollIntoView({ block: 'center', inline: 'center' });
}

function clampTooltipLine(t) {
  const a = state.clamp.result.answer;
  const row = node('div', 'tt-val tt-clamp');
  if (t === 0) {
    row.textContent = 'clamp: the first character is not predicted';
    return row;
  }
  const d = a.delta[t - 1];
  if (d == null) {
    row.textContent = 'clamp: no probability (a character outside the vocabulary)';
    return row;
  }
  const pb = Math.exp(a.base.logp[t - 1]);
  const pc = Math.exp(a.clamped.logp[t - 1]);
  row.append(swatch(unitToQ(d / clampScale())), 'clamp: Δ ln p = ', node('b', null, formatSigned(d, 3)),
    ` (p ${pb.toFixed(3)} → ${pc.toFixed(3)})`);
  return row;
}

// ---------------------------------------------------------------------------
// Steered sampling: two streams from the same prime and seed, with the clamp and
// without (POST /api/sample?stream=ndjson), coloured by the chosen cell.

function defaultPrime(text) {
  if (!el.samplePrime || state.primeEdited) return;
  const nl = text.indexOf('\n');
  const line = [...(nl >= 0 ? text.slice(0, nl + 1) : text)].slice(0, 200).join('');
  el.samplePrime.value = line.trim() ? line : '#include <';
}

function setSampleStatus(msg, isError = false) {
  statusLine(el.sampleStatus, msg, isError);
}

function stopSamples() {
  state.sampling?.abort();
}

async function runSamples() {
  stopSamples();
  if (!el.sampleSteered || !el.samplePlain) return;
  const length = Number(el.sampleLength?.value);
  const temperature = Number(el.sampleTemperature?.value);
  const seed = Number(el.sampleSeed?.value);
  const value = Number(el.clampValue?.value);
  const bad = !Number.isInteger(length) || length < 1 ? 'the length must be a whole number of characters ≥ 1'
    : !Number.isFinite(temperature) || temperature < 0 ? 'the temperature must be a number ≥ 0 (0 = always the likeliest)'
      : !Number.isSafeInteger(seed) || seed < 0 ? 'the seed must be a whole number ≥ 0'
        : el.clampValue?.value.trim() === '' || !Number.isFinite(value) ? 'type the clamp value in the panel above first' : null;
  if (bad) {
    setSampleStatus(`error: ${bad}`, true);
    return;
  }
  const target = clampTarget();
  const watch = { layer: state.layer, kind: state.kind, cell: state.cell };
  const common = { prime: el.samplePrime?.value ?? '', length, temperature, seed, watch };
  const clamp = { layer: target.layer, kind: target.kind, cell: target.cell, value };
  const ctrl = new AbortController();
  state.sampling = ctrl;
  if (el.sampleRun) el.sampleRun.disabled = true;
  if (el.sampleStop) el.sampleStop.disabled = false;
  const colouredBy = `coloured by ${valueLabel(watch.kind)} of layer ${watch.layer} · cell ${watch.cell}`;
  if (el.sampleSteeredCaption) el.sampleSteeredCaption.textContent = `with ${targetLabel(target)} held at ${shortNumber(value)}`;
  if (el.samplePlainCaption) el.samplePlainCaption.textContent = 'without the clamp';
  setSampleStatus(`sampling ${length} characters twice (seed ${seed}), ${colouredBy}…`);
  const t0 = performance.now();
  const results = await Promise.allSettled([
    streamSample(el.sampleSteered, { ...common, clamps: [clamp] }, ctrl.signal),
    streamSample(el.samplePlain, common, ctrl.signal),
  ]);
  if (state.sampling !== ctrl) return; // a newer run took over the panes
  state.sampling = null;
  if (el.sampleRun) el.sampleRun.disabled = false;
  if (el.sampleStop) el.sampleStop.disabled = true;
  const failed = results.find((r) => r.status === 'rejected');
  if (ctrl.signal.aborted) {
    setSampleStatus('stopped');
  } else if (failed) {
    setSampleStatus(`error: ${failed.reason?.message ?? failed.reason}`, true);
  } else {
    const [a, b] = results.map((r) => [...r.value.text]);
    let same = 0;
    while (same < a.length && a[same] === b[same]) same++;
    const how = same === a.length && a.length === b.length ? 'the two samples are the same: the clamp did not change this one'
      : `the samples part after ${same} characters`;
    setSampleStatus(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${how}; ${colouredBy}`);
  }
}

/** One span of a sample, coloured by the watched cell's value after it was drawn. */
function sampleChar(ch, value, kind) {
  const span = node('span', charClass(ch), shownChar(ch));
  if (value != null) {
    paintSpan(span, rawToQ(kind, value), 999);
    span.title = `${kind} = ${formatSigned(value, 3)}` + (kind === 'c' ? ` (tanh ${formatSigned(Math.tanh(value), 3)})` : '');
  }
  return span;
}

/** Streams one sample into `pane`, a character at a time as lines arrive; answers its summary. */
async function streamSample(pane, body, signal) {
  pane.replaceChildren(node('span', 'prime', body.prime));
  pane.dataset.state = 'running';
  pane.dataset.count = '0';
  let count = 0;
  let answer = null;
  try {
    const res = await postStream('/api/sample?stream=ndjson', body, signal);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      const lines = buf.split('\n');
      buf = lines.pop();
      const frag = document.createDocumentFragment();
      for (const line of lines) {
        if (!line.trim()) continue;
        const m = JSON.parse(line);
        if (m.done) {
          answer = m.answer;
        } else if (m.error) {
          throw new ApiError(0, m.error.code, m.error.message);
        } else {
          frag.append(sampleChar(m.char, m.value, body.watch.kind));
          if (m.char === '\n') frag.append('\n');
          count++;
        }
      }
      if (frag.childNodes.length) {
        pane.append(frag);
        pane.dataset.count = String(count);
        pane.scrollTop = pane.scrollHeight;
      }
    }
    if (!answer) throw new ApiError(0, 'short_stream', `the sample ended after ${count} characters without its summary`);
  } catch (e) {
    pane.dataset.state = signal.aborted ? 'stopped' : 'error';
    throw e;
  }
  pane.dataset.state = 'done';
  return answer;
}

// ---------------------------------------------------------------------------
// Wiring.

function isTextField(t) {
  if (!(t instanceof Element)) return false;
  if (t.isContentEditable) return true;
  const tag = t.tagName;
  if (tag === 'TEXTAREA' || tag === 'SELECT') return true;
  if (tag === 'INPUT') return !['button', 'submit', 'reset', 'checkbox', 'radio'].includes(t.type);
  return false;
}

function wire() {
  el.form?.addEventListener('submit', (ev) => {
    ev.preventDefault();
    run();
  });
  el.text?.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      run();
    }
  });
  document.querySelectorAll('a.sample[data-sample]').forEach((a) => {
    a.addEventListener('click', (ev) => {
      const s = state.samples.find((x) => x.id === a.dataset.sample);
      if (!s || !el.text) return; // let the link work as a plain link
      ev.preventDefault();
      el.text.value = s.text;
      run();
    });
  });
  el.layer?.addEventListener('change', () => choose({ layer: Number(el.layer.value) }));
  el.kind?.addEventListener('change', () => choose({ kind: el.kind.value }));
  el.cell?.addEventListener('input', () => {
    const v = parseInt(el.cell.value, 10);
    if (Number.isInteger(v)) setCell(v);
  });
  el.cell?.addEventListener('change', () => {
    const v = parseInt(el.cell.value, 10);
    setCell(Number.isInteger(v) ? v : state.cell);
    el.cell.value = String(state.cell);
  });
  el.prev?.addEventListener('click', () => stepCell(-1));
  el.next?.addEventListener('click', () => stepCell(1));
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') hideTooltip();
    if (ev.ctrlKey || ev.metaKey || ev.altKey || isTextField(ev.target)) return;
    if (ev.key === 'ArrowLeft' || ev.key === 'k') {
      ev.preventDefault();
      stepCell(-1);
    } else if (ev.key === 'ArrowRight' || ev.key === 'j') {
      ev.preventDefault();
      stepCell(1);
    }
  });
  window.addEventListener('pagehide', () => {
    if (state.text != null) writeHash(); // flush a pending update before reload or leaving
  });
  window.addEventListener('hashchange', () => {
    const text = applyHash(readHash());
    if (text != null && text !== state.text) {
      if (el.text) el.text.value = text;
      loadView(text);
    } else {
      refresh();
    }
  });

  // Tooltip: hover, or tap/click to pin.
  // While the mouse button is down (selecting text) the tooltip stays away, so it
  // never covers the line being selected.
  el.colored?.addEventListener('mousedown', (ev) => {
    if (ev.button !== 0) return;
    state.dragging = true;
    hideTooltip();
  });
  document.addEventListener('mouseup', () => {
    state.dragging = false;
  });
  el.colored?.addEventListener('mouseover', (ev) => {
    if (state.pinned >= 0 || state.dragging) return;
    const span = spanOf(ev.target);
    if (span && Number(span.dataset.t) !== state.hoverT) showTooltip(span);
  });
  el.colored?.addEventListener('mouseleave', () => {
    if (state.pinned < 0) hideTooltip();
  });
  el.colored?.addEventListener('click', (ev) => {
    const sel = window.getSelection();
    if (sel && !sel.isCollapsed) return; // a text selection, not a tap
    const span = spanOf(ev.target);
    if (!span) return;
    const t = Number(span.dataset.t);
    if (state.pinned === t) {
      hideTooltip();
      return;
    }
    showTooltip(span);
    state.pinned = t;
    el.tooltip.classList.add('pinned');
  });
  document.addEventListener('click', (ev) => {
    if (state.pinned >= 0 && !el.colored.contains(ev.target) && !el.tooltip.contains(ev.target)) hideTooltip();
  });
  window.addEventListener('scroll', () => {
    if (state.hoverT >= 0 && state.spans[state.hoverT]) placeTooltip(state.spans[state.hoverT]);
  }, { passive: true });
  el.colored?.addEventListener('scroll', () => {
    if (state.pinned < 0) hideTooltip();
    else if (state.spans[state.pinned]) placeTooltip(state.spans[state.pinned]);
  }, { passive: true });

  // Heatmap.
  watchHeatmapBox();
  el.heatmapSort?.addEventListener('change', drawHeatmap);
  el.heatmap?.addEventListener('click', (ev) => {
    const hit = heatmapHit(ev);
    if (hit) setCell(hit.cell);
  });
  el.heatmap?.addEventListener('mousemove', (ev) => {
    const hit = heatmapHit(ev);
    el.heatmap.title = hit ? `cell ${hit.cell} · character ${hit.t} (click to pick the cell)` : '';
  });

  // Finder.
  const syncRegex = () => {
    if (el.regex) el.regex.hidden = el.concept?.value !== 'regex';
  };
  el.concept?.addEventListener('change', () => {
    syncRegex();
    if (!el.regex.hidden) el.regex.focus();
  });
  syncRegex();
  el.finderForm?.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const concept = el.concept ? el.concept.value : 'string';
    if (concept === 'regex') {
      const re = el.regex.value;
      if (!re) {
        setStatus('type a regex first', true);
        el.regex.focus();
        return;
      }
      rank({ regex: re }, `/${re}/`);
    } else {
      rank({ feature: concept }, concept);
    }
  });
  el.rankSelection?.addEventListener('click', () => {
    const spans = selectionSpans();
    if (spans.length === 0) {
      setStatus('select some characters of the coloured text first', true);
      return;
    }
    const n = spans.reduce((a, [s, e]) => a + e - s, 0);
    rank({ spans }, `the selection (${n} characters)`);
  });
  el.results?.addEventListener('click', (ev) => {
    const a = ev.target instanceof Element ? ev.target.closest('a.rank-pick') : null;
    if (!a) return;
    ev.preventDefault();
    choose({ layer: Number(a.dataset.layer), kind: a.dataset.kind, cell: Number(a.dataset.cell) });
  });

  // Clamping.
  el.clampForm?.addEventListener('submit', (ev) => {
    ev.preventDefault();
    applyClamp();
  });
  el.clampAblate?.addEventListener('click', () => setClampValue(0));
  el.clampMin?.addEventListener('click', () => setClampValue(Number(el.clampMin.dataset.value)));
  el.clampMax?.addEventListener('click', () => setClampValue(Number(el.clampMax.dataset.value)));
  el.clampSlider?.addEventListener('input', sliderMoved);
  el.clampValue?.addEventListener('input', () => syncSlider());
  el.clampScope?.addEventListener('change', showScopeNote);
  const panel = el.clampForm?.closest('.panel');
  if (panel && 'IntersectionObserver' in window) {
    new IntersectionObserver((entries) => {
      state.clamp.panelVisible = entries.some((e) => e.isIntersecting);
      if (state.clamp.panelVisible) scheduleStats();
    }).observe(panel);
  } else {
    state.clamp.panelVisible = true;
  }
  document.addEventListener('selectionchange', () => {
    const spans = selectionSpans();
    if (spans.length === 0) return; // keep the last selection: clicking a control clears it
    state.clamp.selection = spans;
    showScopeNote();
  });
  el.clampScale?.addEventListener('change', () => {
    if (showingClamp()) {
      recolor();
      updateLegend();
    }
    showClampResult();
  });
  el.showCell?.addEventListener('change', () => setColourBy('cell'));
  el.showClamp?.addEventListener('change', () => setColourBy('clamp'));
  el.clampAffected?.addEventListener('click', (ev) => {
    const b = ev.target instanceof Element ? ev.target.closest('button[data-t]') : null;
    if (!b) return;
    if (!showingClamp()) setColourBy('clamp');
    markChar(Number(b.dataset.t));
  });

  // Steered sampling.
  el.sampleForm?.addEventListener('submit', (ev) => {
    ev.preventDefault();
    runSamples();
  });
  el.sampleStop?.addEventListener('click', stopSamples);
  el.samplePrime?.addEventListener('input', () => (state.primeEdited = true));
}

function start() {
  if (!initial || !el.colored) return;
  state.spans = Array.from(el.colored.querySelectorAll('.ch'));
  const text = applyHash(readHash());
  if (text != null && el.text) el.text.value = text;
  updateControls();
  wire();
  run();
}

start();
