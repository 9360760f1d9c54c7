// cellscope's page script: takes over the server-rendered index page (which works
// without it) for live cell switching, hover predictions, the heatmap, the cell
// finder, and the causal lab (clamping a cell, steered sampling). An ES module
// with no dependencies and no build step.
//
// Data flow: POST /api/view returns one layer of the trace as int8 (q = round(127·u),
// u ∈ [−1, 1] the colour value; row = character, column = cell). A run fetches the
// shown kind first (an eighth of the bytes), shows it, then fetches the layer's other
// kinds behind it (the server answers those from its trace cache). Choosing a kind
// or a cell then only re-reads those bytes; choosing a layer or new text fetches.
//
// Pasted text is untrusted. It reaches the DOM only through textContent or through
// `escapeChar` below; never through innerHTML as it is.

// Kinds and their display rules come from the server (src/display.rs, in the
// page's #initial data); the model's own kinds are the options of the kind menu
// (an LSTM's h, c, i, f, g, o, write, keep; a GRU's h, r, z, n; an RNN's h).
const KIND_TABLE = (() => {
  const data = document.getElementById('initial');
  return (data ? JSON.parse(data.textContent).kinds : null) ?? [];
})();
const KINDS = [...document.querySelectorAll('#kind option')].map((o) => o.value);
const SCALE_OF = new Map(KIND_TABLE.map((k) => [k.letter, k.scale]));
const SHOWS = new Map(KIND_TABLE.map((k) => [k.letter, k.shows]));
const GATES = new Set(KIND_TABLE.filter((k) => k.scale === 'gate').map((k) => k.letter));
/** Above this many bytes (T × H × 6 kinds) only the current kind is fetched. */
const ALL_KINDS_MAX_BYTES = 16_000_000;
/** The heatmap's canvas is at most this wide; longer texts are averaged into columns. */
const HEATMAP_MAX_WIDTH = 4096;
/** Without CompressionStream, texts up to this long go into the hash as plain text. */
const HASH_TEXT_MAX = 2000;
const TOP_K = 5;
/** The finder flags a c cell as saturated when |c| > SAT_ABS on at least SAT_FRACTION of the text. */
const SAT_ABS = 2;
const SAT_FRACTION = 0.9;
/** "this cell's range": the 2nd to 98th percentile of the cell's raw values over the text. */
const RANGE_PCT = [0.02, 0.98];

const $ = (sel) => document.querySelector(sel);

/** The served model this page is about (its id), and `?model=ID` for links when it is not the default. */
const MODEL = document.body?.dataset.model || '';
const MQ = document.body?.dataset.mq || '';

/** A request body naming this page's model, so every API call asks the same model. */
const withModel = (body) => (MODEL && body && body.model === undefined ? { ...body, model: MODEL } : body);

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

/** WCAG contrast ratio of two relative luminances. */
function contrastRatio(l1, l2) {
  return (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
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
 * Text colour on each background: white or black, whichever contrasts more (white
 * below luminance ~0.18). With black (not the page's #1f2328) the worse of the two
 * is still ≥ 4.58:1 at the crossover, so every background meets WCAG AA (4.5:1).
 * '' means black: style.css gives coloured characters and legend stops black text.
 */
const TEXT_COLORS = new Array(256);
/** The same colours as little-endian RGBA words, for ImageData. */
const RGBA_COLORS = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  const [r, g, b] = divergingRgb(Math.max(-127, i - 128) / 127);
  CSS_COLORS[i] = `rgb(${r}, ${g}, ${b})`;
  const lum = relativeLuminance(r, g, b);
  TEXT_COLORS[i] = contrastRatio(lum, 1) > contrastRatio(lum, 0) ? '#fff' : '';
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
  const scale = SCALE_OF.get(kind);
  const u = scale === 'squashed' ? Math.tanh(v) : scale === 'gate' ? 2 * v - 1 : v;
  return unitToQ(u);
}

/** The colour byte of u ∈ [−1, 1] (clipped; NaN → 0). */
function unitToQ(u) {
  return Number.isFinite(u) ? Math.round(127 * Math.max(-1, Math.min(1, u))) : 0;
}

function valueLabel(kind) {
  return SHOWS.get(kind) ?? kind;
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
        body: JSON.stringify(withModel(body)),
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
        body: JSON.stringify(withModel(body)),
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

/** Shown after the timing when the view came from the int8 trace (README, "Performance"). */
const PRECISION_NOTE = ' with int8 weights (colours within a shade of the exact trace; /api/trace is exact)';

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
  rank: $('#rank'),
  rankSelection: $('#rank-selection'),
  results: $('#finder-results'),
  probeRun: $('#probe-run'),
  probeResult: $('#probe-result'),
  probeSummary: $('#probe-summary'),
  probeSplit: $('#probe-split'),
  probeToggle: $('#probe-toggle'),
  probeColour: $('#probe-colour'),
  probeCells: $('#probe-cells'),
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
  textLimit: $('#text-limit'),
  cellError: $('#cell-error'),
  scale: $('#scale'),
  scaleBox: $('#scale-box'),
  scaleNote: $('#scale-note'),
  memoryMode: $('#memory-mode'),
  memoryHint: $('#memory-hint'),
  memoryStep: $('#memory-step'),
  memoryStepTitle: $('#memory-step-title'),
  memoryLines: $('#memory-lines'),
  memoryGrad: $('#memory-grad'),
  memoryGradTitle: $('#memory-grad-title'),
  memoryPlot: $('#memory-plot'),
  memoryGradCaption: $('#memory-grad-caption'),
  gradMode: $('#grad-mode'),
  wrap: $('#wrap'),
  heatWrap: $('#heatmap-wrap'),
  heatBox: $('#heatmap-box'),
  hmY: $('#hm-yaxis'),
  hmX: $('#hm-xaxis'),
  view: $('section.view'),
};

const state = {
  layers: initial?.layers ?? 1,
  hidden: initial?.hidden ?? 1,
  samples: initial?.samples ?? [],
  maxChars: initial?.max_text_chars ?? Infinity,
  layer: initial?.layer ?? 0,
  kind: initial?.kind ?? (KINDS.includes('c') ? 'c' : 'h'),
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
  /** The last finder query: {request, label, textNo}; re-run when a new text is shown. */
  lastQuery: null,
  /** Counts the texts shown (text #n), so results computed on one are never shown for another. */
  textNo: 0,
  /** Whether a view request is on its way (the finder waits for it). */
  tracing: false,
  rankSeq: 0,
  /** Colour scale for c: 'tanh' (the view's bytes) or 'range' (this cell's exact values). */
  scale: 'tanh',
  /** Exact c columns for the 'range' scale, by `${textNo}:${layer}:${cell}`. */
  exact: new Map(),
  exactTimer: 0,
  exactPending: null,
  /** Whole-layer rankings for the heatmap's relevance sort, by key. */
  relevance: new Map(),
  /** Whether the user set the wrap checkbox (else it follows the text: prose wraps). */
  wrapTouched: false,
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
  /** How the model remembers: see "Memory" below. */
  memory: {
    /** What takes over the text's colours: 'off', 'writes' (the cell's writes and erases) or 'gradient'. */
    mode: 'off',
    /** The chosen cell's writes and erases, by `${textNo}:${layer}:${cell}`. */
    writes: new Map(),
    writesPending: null,
    /** The clicked position (−1: none) and what was read for it. */
    at: -1,
    /** POST /api/saliency's answer for `at`, with textNo and peak. */
    grad: null,
    /** The key of the shown step explanation. */
    stepKey: '',
    seq: 0,
  },
  probe: {
    /** The last POST /api/probe answer, with the concept's label and the textNo it was fitted on; or null. */
    result: null,
    /** Whether the direction's score colours the text (one colouring at a time). */
    colour: false,
    seq: 0,
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
  /** Counts the texts shown: text #n in the finder's caption. */
  get textNo() {
    return state.textNo;
  },
  get scale() {
    return state.scale;
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
  if (chars.length === 0) el.colored.append(node('span', 'empty-note', 'The text is empty: paste or type some text above, or pick a sample, then Run.'));
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
  if (recolorProbe() || recolorMemory()) return;
  if (showingClamp()) {
    recolorClamp();
    return;
  }
  const data = currentData();
  if (!data) return;
  const H = state.view.header.hidden;
  const cell = state.cell;
  const n = Math.min(state.spans.length, data.length / H);
  const ex = rangeScale();
  if (ex) {
    const { values, centre, half } = ex;
    paintText(n, (t) => unitToQ((values[t] - centre) / half), 'cell');
  } else {
    paintText(n, (t) => data[t * H + cell], 'cell');
  }
  if (el.colored) el.colored.dataset.scale = ex ? 'range' : 'tanh';
}

// ---------------------------------------------------------------------------
// The c scale. tanh(c) squashes a cell that sits at |c| > 2 into one colour;
// "this cell's range" colours by the cell's raw c over the text instead, from its
// 2nd to its 98th percentile (centred at 0 when that range holds 0), read exactly
// from POST /api/trace (the view holds only int8 of tanh(c)).

function exactKey(layer = state.layer, cell = state.cell) {
  return `${state.textNo}:${layer}:${cell}`;
}

/** The exact column of the chosen c cell when the 'range' scale is on and it is loaded, else null. */
function rangeScale() {
  if (state.scale !== 'range' || state.kind !== 'c' || state.text == null || !state.view?.header.length) return null;
  const ex = state.exact.get(exactKey());
  if (ex) return ex;
  clearTimeout(state.exactTimer);
  state.exactTimer = setTimeout(loadExact, 120); // stepping through cells fetches once
  return null;
}

function setScale(mode, redraw = true) {
  state.scale = mode === 'range' ? 'range' : 'tanh';
  if (el.scale) el.scale.value = state.scale;
  if (!redraw) return;
  leaveClampView();
  leaveProbeView();
  recolor();
  updateLegend();
  refreshTooltip();
  scheduleHash();
}

/** The p-quantile of sorted values (nearest rank). */
const quantile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(p * (sorted.length - 1))))];

/** The 'range' scale of raw values: centre and half-width from the 2nd and 98th percentiles. */
function rangeOf(values) {
  const sorted = Float64Array.from(values).sort();
  const lo = sorted.length ? quantile(sorted, RANGE_PCT[0]) : 0;
  const hi = sorted.length ? quantile(sorted, RANGE_PCT[1]) : 0;
  const zeroInside = lo < 0 && hi > 0;
  const centre = zeroInside ? 0 : (lo + hi) / 2;
  const half = Math.max(zeroInside ? Math.max(-lo, hi) : (hi - lo) / 2, 1e-6);
  return { lo, hi, centre, half };
}

async function loadExact() {
  if (state.scale !== 'range' || state.kind !== 'c' || state.text == null) return;
  const key = exactKey();
  if (state.exact.has(key) || state.exactPending === key) return;
  state.exactPending = key;
  const { layer, cell, text } = state;
  let res;
  try {
    res = await post('/api/trace', { text, layers: [layer], kinds: ['c'], cells: [cell], top_k: 0 });
  } catch (e) {
    if (state.exactPending === key) state.exactPending = null;
    showError(e);
    return;
  }
  if (state.exactPending === key) state.exactPending = null;
  if (text !== state.text) return;
  const values = Float32Array.from(res.layers[0].c, (row) => row[0]);
  if (state.exact.size >= 64) state.exact.delete(state.exact.keys().next().value);
  state.exact.set(key, { values, ...rangeOf(values) });
  if (key === exactKey()) {
    recolor();
    updateLegend();
    refreshTooltip();
  }
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
  if (shownProbe()) {
    updateProbeLegend();
    return;
  }
  if (memoryShown()) {
    updateMemoryLegend();
    return;
  }
  if (showingClamp()) {
    updateClampLegend();
    return;
  }
  const opt = el.kind?.selectedOptions[0];
  const kindLabel = opt ? opt.textContent.split(' — ')[1] ?? state.kind : state.kind;
  if (el.legendTitle) el.legendTitle.textContent = `layer ${state.layer} · ${kindLabel} · cell ${state.cell}`;
  const ex = rangeScale();
  const stops = el.legend ? el.legend.querySelectorAll('.stop') : [];
  stops.forEach((s, i) => {
    const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
    paintStop(s, Math.round(u * 127));
    s.textContent = ex ? formatSigned(ex.centre + u * ex.half, 2, true)
      : GATES.has(state.kind) ? ((u + 1) / 2).toFixed(2) : formatSigned(u, 2, true);
  });
  const note = el.scaleNote;
  if (!note) return;
  if (ex) {
    note.textContent = `scale: this cell's range — raw c, its 2nd–98th percentile over the text is ` +
      `${formatSigned(ex.lo, 2)} to ${formatSigned(ex.hi, 2)}; the colours run ${formatSigned(ex.centre - ex.half, 2)} to ` +
      `${formatSigned(ex.centre + ex.half, 2)}, centred at ${formatSigned(ex.centre, 2)}`;
    Object.assign(note.dataset, { scale: 'range', lo: String(ex.lo), hi: String(ex.hi), centre: String(ex.centre), half: String(ex.half) });
  } else {
    const reading = state.scale === 'range' && state.kind === 'c';
    note.textContent = reading ? "scale: this cell's range — reading the cell's exact values…"
      : state.kind === 'c' ? 'scale: tanh(c), −1 to +1 (a cell at |c| > 2 looks flat: try “this cell’s range”)'
        : GATES.has(state.kind) ? `scale: ${state.kind}, 0 to 1` : `scale: ${state.kind}, −1 to +1`;
    note.dataset.scale = reading ? 'loading' : 'fixed';
  }
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

/** What the intro says once another cell than the one it names is shown. */
const INTRO_GENERAL = 'Each character is coloured by the chosen cell: red is high, blue low; hover a character ' +
  "for the model's next-character guesses. Try ◀ ▶ to step through cells, or Find cells for if, comment or nesting depth.";

function updateControls() {
  // The server's intro names the first cell; it must not describe another.
  const intro = $('#intro');
  if (intro && initial && (state.layer !== initial.layer || state.kind !== initial.kind || state.cell !== initial.cell)) {
    intro.textContent = INTRO_GENERAL;
  }
  if (el.layer) el.layer.value = String(state.layer);
  if (el.kind) el.kind.value = state.kind;
  if (el.cell && document.activeElement !== el.cell) el.cell.value = String(state.cell);
  if (el.cell) el.cell.max = String(state.hidden - 1);
  if (el.cellLink) {
    const part = state.text != null ? textPart(state.text) : null;
    el.cellLink.href = `/cell/${state.layer}/${state.kind}/${state.cell}${MQ}${part ? '#' + part : ''}`;
  }
  if (el.scaleBox) el.scaleBox.hidden = state.kind !== 'c';
  markActiveResult();
  updateLegend();
  updateClampTarget();
}

// ---------------------------------------------------------------------------
// The URL keeps the view: #layer=1&kind=c&cell=42[&scale=range][&sample=c | &z=...]
// A pasted text travels as z: its UTF-8, deflate-raw compressed, base64url (up to
// the 20,000-character limit, a link of a few kB for code). `&text=` (plain, from
// older links) is still read.

/** base64url of bytes, without padding. */
function toBase64Url(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64Url(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

async function deflateText(text) {
  const stream = new Blob([new TextEncoder().encode(text)]).stream().pipeThrough(new CompressionStream('deflate-raw'));
  return toBase64Url(new Uint8Array(await new Response(stream).arrayBuffer()));
}

async function inflateText(z) {
  const stream = new Blob([fromBase64Url(z)]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new TextDecoder('utf-8', { fatal: true }).decode(await new Response(stream).arrayBuffer());
}

/** The compressed form of one text (the last one asked for), once ready. */
const packed = { text: null, z: null, busy: null };

/** The hash's text part for `text` (sample=… or z=…), or null while it is being compressed. */
function textPart(text) {
  const sample = sampleIdFor(text);
  if (sample) return `sample=${encodeURIComponent(sample)}`;
  if (packed.text === text && packed.z != null) return `z=${packed.z}`;
  if (typeof CompressionStream !== 'function') {
    return text.length <= HASH_TEXT_MAX ? `text=${encodeURIComponent(text)}` : '';
  }
  if (packed.text !== text) {
    packed.text = text;
    packed.z = null;
    const busy = (packed.busy = deflateText(text).then((z) => {
      if (packed.busy !== busy) return;
      packed.z = z;
      writeHash();
    }, () => {
      if (packed.busy === busy) packed.z = '';
    }));
  }
  return packed.z === '' ? '' : null;
}

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
  if (state.scale === 'range') h += '&scale=range';
  if (state.text != null) {
    const part = textPart(state.text);
    if (part == null) return; // written when the text is compressed
    if (part) h += '&' + part;
    updateCellLinks(part);
  }
  if (location.hash !== h) history.replaceState(null, '', h);
}

/** Cell page links carry the text, so that their "colour the main text by it" brings it back. */
function updateCellLinks(part) {
  const tail = part ? '#' + part : '';
  if (el.cellLink) el.cellLink.href = `/cell/${state.layer}/${state.kind}/${state.cell}${MQ}${tail}`;
  el.results?.querySelectorAll('a.cellpage').forEach((a) => {
    a.href = a.getAttribute('href').replace(/#.*$/, '') + tail;
  });
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
  setScale(h.scale === 'range' ? 'range' : 'tanh', false);
  if (h.text != null) return h.text;
  if (h.sample != null) return state.samples.find((s) => s.id === h.sample)?.text ?? null;
  return null;
}

/** applyHash, plus a compressed text (z=…): answers the text the hash names, if any. */
async function textOfHash(h) {
  const text = applyHash(h);
  if (h.z == null) return text;
  try {
    const t = await inflateText(h.z);
    packed.text = t;
    packed.z = h.z;
    packed.busy = null;
    return t;
  } catch (e) {
    setStatus(`error: the link's text could not be read (${e.message}); showing the sample`, true);
    return null;
  }
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
  setTracing(true);
  const layer = state.layer;
  const allKinds = wantsAllKinds(text);
  const kinds = [state.kind];
  setStatus(`tracing ${n} characters…`);
  const t0 = performance.now();
  let view;
  try {
    const buf = await post('/api/view', { text, layer, kinds, top_k: TOP_K }, { binary: true });
    view = parseView(buf);
  } catch (e) {
    if (seq === state.seq) {
      state.requestedText = state.text; // layer and kind changes go on with the shown text
      setTracing(false);
      showError(e);
    }
    return;
  }
  if (seq !== state.seq) return; // a newer request superseded this one
  setTracing(false);
  const fetched = performance.now() - t0;
  timings.fetch = fetched;
  const newText = text !== state.text || !state.view || state.view.header.length !== view.header.length;
  // Kinds already fetched for this text and layer stay.
  const kept = !newText && state.view.layer === layer ? state.view.data : new Map();
  state.view = { layer, header: view.header, data: new Map([...kept, ...view.data]), allKinds };
  state.hidden = view.header.hidden;
  state.text = text;
  if (newText) {
    state.textNo++;
    hideTooltip();
    buildSpans(view.header);
    $('#error')?.remove();
    clampTextChanged(text);
    memoryTextChanged();
    probeTextChanged();
    autoWrap(text);
    // The intro describes the server's first text and its cell, not another text.
    if (el.text && text !== el.text.defaultValue) $('#intro')?.remove();
  }
  recolor();
  updateLegend();
  drawHeatmap();
  updateControls();
  writeHash();
  loadStep();
  if (newText) finderTextChanged();
  timings.total = performance.now() - t0;
  state.runs++;
  const rest = KINDS.filter((k) => !state.view.data.has(k));
  if (allKinds && rest.length) fetchOtherKinds(seq, text, layer, rest);
  setStatus(`traced ${view.header.length} characters in ${Math.round(fetched)} ms` +
    (allKinds ? '' : ` (long text: kind ${kinds[0]} only)`) +
    // The server traces the page's view with int8 weights unless asked otherwise.
    (view.header.precision === 'int8' ? PRECISION_NOTE : ''));
  // The layer or kind may have changed while the request was on its way.
  if (state.layer !== layer || !view.data.has(state.kind)) refresh();
}

/**
 * The layer's other kinds, fetched after the shown one so that a kind switch is
 * instant; dropped if the text or layer changed meanwhile. On failure a kind
 * loads when it is chosen.
 */
async function fetchOtherKinds(seq, text, layer, kinds) {
  let more;
  try {
    more = parseView(await post('/api/view', { text, layer, kinds, top_k: TOP_K }, { binary: true }));
  } catch {
    return;
  }
  const v = state.view;
  if (seq !== state.seq || !v || v.layer !== layer || state.text !== text) return;
  if (more.header.length !== v.header.length) return;
  for (const [k, d] of more.data) v.data.set(k, d);
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

/** Prose (few code characters, few indented lines) wraps; code keeps its lines. */
function looksLikeProse(text) {
  const lines = text.split('\n').filter((l) => l.trim());
  if (lines.length === 0) return false;
  const code = (text.match(/[{};=<>#()[\]/*&|\\]/g) ?? []).length / text.length;
  const indented = lines.filter((l) => /^[ \t]/.test(l)).length / lines.length;
  return code < 0.02 && indented < 0.2;
}

function setWrap(on) {
  el.colored?.classList.toggle('wrap', on);
  if (el.wrap) el.wrap.checked = on;
}

function autoWrap(text) {
  if (!state.wrapTouched) setWrap(looksLikeProse(text));
}

function run() {
  const text = el.text ? el.text.value : '';
  if (!checkTextLength()) {
    const n = charCount(text);
    setStatus(`error: text has ${n} characters; this server accepts at most ${state.maxChars}`, true);
    return Promise.resolve();
  }
  return loadView(text);
}

/** The finder waits while a trace is on its way: its results must belong to the shown text. */
function setTracing(on) {
  state.tracing = on;
  for (const b of [el.rank, el.rankSelection]) {
    if (!b) continue;
    b.disabled = on;
    if (on) b.dataset.wait = '1';
    else delete b.dataset.wait;
  }
}

const fmtInt = (n) => n.toLocaleString('en-US');

/**
 * Shows or hides the limit message under the text box; answers whether the text
 * is within the limit. Pastes that would pass it are refused in wire().
 */
function checkTextLength() {
  const n = charCount(el.text ? el.text.value : '');
  const over = n > state.maxChars;
  if (over) {
    showTextLimit(`The text has ${fmtInt(n)} characters; the limit is ${fmtInt(state.maxChars)}. ` +
      'Shorten it before Run: nothing is cut for you.');
  } else if (el.textLimit && el.textLimit.dataset.kind === 'over') {
    el.textLimit.hidden = true;
  }
  return !over;
}

function showTextLimit(msg, kind = 'over') {
  if (!el.textLimit) return;
  el.textLimit.textContent = msg;
  el.textLimit.dataset.kind = kind;
  el.textLimit.hidden = false;
}

// ---------------------------------------------------------------------------
// Choosing layer, kind and cell.

function clampCell(c) {
  return Math.max(0, Math.min(state.hidden - 1, c | 0));
}

/** Picks a cell of the loaded layer/kind: no round trip. */
function setCell(c) {
  leaveClampView();
  leaveProbeView();
  state.cell = clampCell(c);
  if (el.cellError) el.cellError.hidden = true;
  el.cell?.removeAttribute('aria-invalid');
  updateControls();
  recolor();
  moveHeatmapMarker();
  refreshTooltip();
  scheduleHash();
  loadStep();
}

/** The cell typed into #cell, or null (with a visible message) when there is no such cell. */
function typedCell() {
  const raw = el.cell.value.trim();
  const v = Number(raw);
  const ok = raw !== '' && Number.isInteger(v) && v >= 0 && v < state.hidden;
  if (el.cellError) {
    el.cellError.hidden = ok || raw === '';
    if (!ok && raw !== '') {
      el.cellError.textContent = `no cell ${raw}: this layer has ${state.hidden} cells, 0–${state.hidden - 1}; ` +
        `still showing cell ${state.cell}`;
    }
  }
  el.cell.setAttribute('aria-invalid', String(!ok && raw !== ''));
  return ok ? v : null;
}

function stepCell(delta) {
  const H = state.hidden;
  setCell((((state.cell + delta) % H) + H) % H);
}

function choose({ layer = state.layer, kind = state.kind, cell = state.cell }) {
  leaveClampView();
  leaveProbeView();
  if (el.cellError) el.cellError.hidden = true;
  el.cell?.removeAttribute('aria-invalid');
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
  const ex = rangeScale();
  if (ex) {
    sw.style.background = CSS_COLORS[unitToQ((ex.values[t] - ex.centre) / ex.half) + 128];
    val.append(' · c = ', node('b', null, formatSigned(ex.values[t], 3)));
  }
  out.push(val);
  const mem = memoryTooltipLine(t) ?? probeTooltipLine(t);
  if (mem) out.push(mem);
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

/**
 * Rows by relevance to the last finder query on this text: the whole layer and
 * kind ranked (POST /api/cells/rank with top_k = H), fetched once per query, layer
 * and kind. Answers {order, note}; order is null while the ranking is on its way.
 */
function relevanceOrder(H) {
  const q = state.lastQuery;
  if (!q || q.textNo !== state.textNo) {
    return { order: null, note: `no finder query for this text yet: run "Rank cells" to sort rows by relevance; rows by index` };
  }
  const key = `${state.textNo}:${JSON.stringify(q.request)}:${state.layer}:${state.kind}`;
  const rel = state.relevance.get(key);
  if (rel === undefined) {
    state.relevance.set(key, null);
    loadRelevance(key, q, H);
  }
  if (!rel) return { order: null, note: `ranking every cell of layer ${state.layer} · ${state.kind} for ${q.label}…; rows by index meanwhile` };
  if (rel.error) return { order: null, note: `${rel.error}; rows by index` };
  const seen = new Set(rel.cells);
  const order = rel.cells.concat(Array.from({ length: H }, (_, c) => c).filter((c) => !seen.has(c)));
  return { order, note: `rows sorted by relevance to ${q.label} (${rel.metric}, best first)` };
}

async function loadRelevance(key, q, H) {
  const { layer, kind, text } = state;
  let res;
  try {
    res = await post('/api/cells/rank', { text, layers: [layer], kinds: [kind], top_k: H, ...q.request });
  } catch (e) {
    state.relevance.set(key, { error: e.code === 'bad_feature' ? explainBadLabels(e.message, q.request) : `ranking failed: ${e.message}` });
    if (el.heatmapSort?.value === 'rank') drawHeatmap();
    return;
  }
  if (!state.relevance.has(key)) return; // the text changed meanwhile
  state.relevance.set(key, { cells: res.cells.filter((c) => c.cell < H).map((c) => c.cell), metric: METRIC_LABEL[res.metric] ?? res.metric });
  if (el.heatmapSort?.value === 'rank') drawHeatmap();
}

/** A round step (1, 2 or 5 × 10^k) that cuts n into about `target` parts. */
function niceStep(n, target) {
  const raw = Math.max(1, n / target);
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

/** Character ticks under the heatmap and cell ticks beside it (the cell at each tick's row). */
function drawHeatmapAxes(T, H, order, rowH) {
  if (el.hmX) {
    const step = niceStep(T, 8);
    const ticks = [];
    for (let t = 0; t < T; t += step) {
      const s = node('span', 'hm-tick', String(t));
      s.style.left = `${(100 * t) / T}%`;
      ticks.push(s);
    }
    const title = node('span', 'hm-axis-title', 'character →');
    el.hmX.replaceChildren(title, ...ticks);
  }
  if (el.hmY) {
    el.hmY.style.height = `${H * rowH}px`;
    const step = niceStep(H, Math.max(2, Math.floor((H * rowH) / 40)));
    const ticks = [];
    for (let r = 0; r < H; r += step) {
      const s = node('span', 'hm-tick', String(order[r]));
      s.style.top = `${r * rowH}px`;
      ticks.push(s);
    }
    const sel = node('span', 'hm-sel');
    sel.id = 'hm-sel';
    el.hmY.replaceChildren(...ticks, sel);
  }
}

function heatmapNote(text) {
  const wrap = el.heatBox ?? el.heatmap?.parentElement;
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
  if (el.heatBox) el.heatBox.hidden = T === 0;
  if (T === 0) {
    heat.rowOf = null;
    heatmapNote('no characters to draw: the text is empty');
    return;
  }
  const sort = el.heatmapSort ? el.heatmapSort.value : 'index';
  let order = null;
  let note = '';
  if (sort === 'activity') {
    order = activityOrder(data, T, H);
    note = 'rows sorted by variance over the text, most active first';
  } else if (sort === 'rank') {
    ({ order, note } = relevanceOrder(H));
  } else if (sort === 'memory') {
    ({ order, note } = memoryOrder(T, H));
  }
  order ??= Array.from({ length: H }, (_, c) => c);
  const rowOf = new Int32Array(H);
  order.forEach((c, r) => (rowOf[c] = r));

  const rowH = Math.max(1, Math.min(12, Math.floor(384 / H)));
  const colW = T > 0 ? Math.max(1, Math.min(6, Math.floor(1200 / T))) : 1;
  const cols = Math.min(T, HEATMAP_MAX_WIDTH);
  const width = Math.max(1, cols * colW);
  const height = H * rowH;
  canvas.width = width;
  canvas.height = height;
  // Scaled to the box's width (never a horizontal scrollbar); rows stay 1:1.
  canvas.style.width = '100%';
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
  heatmapNote(`layer ${state.layer} · ${valueLabel(state.kind)}: ${H} cells (rows) × ${fmtInt(T)} characters (columns)${scale}${note ? ' · ' + note : ''}`);
  canvas.dataset.order = order.slice(0, 8).join(',');
  canvas.dataset.sort = sort;
  el.heatWrap?.setAttribute('aria-label', `heatmap of layer ${state.layer} · ${valueLabel(state.kind)}: rows are the ${H} cells, ` +
    `columns the ${fmtInt(T)} characters; the chosen cell's row is marked`);
  drawHeatmapAxes(T, H, order, rowH);
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
  // The canvas is the plot's first, block-level child: its rows start at y = 0.
  const top = (heat.rowOf[state.cell] ?? 0) * heat.rowH;
  marker.style.top = `${top}px`;
  marker.style.width = '100%';
  marker.style.height = `${heat.rowH}px`;
  marker.dataset.cell = String(state.cell);
  const sel = document.getElementById('hm-sel');
  if (sel) {
    sel.textContent = `▸ ${state.cell}`;
    sel.style.top = `${top + heat.rowH / 2}px`;
    sel.dataset.cell = String(state.cell);
  }
  const wrap2 = el.heatWrap ?? wrap;
  // Keep the marked row in view when the wrapper scrolls vertically.
  const { scrollTop, clientHeight } = heatBox;
  if (clientHeight > 0 && (top < scrollTop || top + heat.rowH > scrollTop + clientHeight)) {
    wrap2.scrollTop = Math.max(0, top - clientHeight / 2);
  }
}

function watchHeatmapBox() {
  const wrap = el.heatWrap ?? el.heatmap?.parentElement;
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

/** Ranks cells for a query; `quiet` (the re-rank after a new text) leaves the status line to the trace. */
async function rank(request, label, { quiet = false } = {}) {
  if (state.text == null) {
    setStatus('run the text first', true);
    return;
  }
  if (state.tracing) {
    setStatus('wait for the trace to finish: the finder ranks the text shown', true);
    return;
  }
  const text = state.text;
  const textNo = state.textNo;
  state.lastQuery = { request, label, textNo };
  const seq = ++state.rankSeq;
  const empty = finderEmptyState(request, label);
  if (empty) {
    showFinderEmpty(empty);
    return;
  }
  const body = { text, kinds: finderKinds(), top_k: 20, ...request };
  const say = quiet ? () => {} : setStatus;
  say(`ranking cells for ${label}…`);
  el.results?.setAttribute('aria-busy', 'true');
  const t0 = performance.now();
  let res;
  try {
    res = await post('/api/cells/rank', body);
  } catch (e) {
    if (seq !== state.rankSeq) return;
    el.results?.removeAttribute('aria-busy');
    if (e.code === 'bad_feature') {
      showFinderEmpty(explainBadLabels(e.message, request, label));
      say(`no ranking for ${label} on this text`);
    } else if (quiet) {
      showFinderEmpty(`Ranking ${label} on the new text failed: ${e.message}`);
    } else {
      showError(e);
    }
    return;
  }
  // A newer query, or a new text, took over: these results belong to neither.
  if (seq !== state.rankSeq || textNo !== state.textNo) return;
  el.results?.removeAttribute('aria-busy');
  state.ranking = res.cells.map(({ layer, kind, cell }) => ({ layer, kind, cell }));
  state.rankingLabel = label;
  showResults(res, label);
  if (el.heatmapSort?.value === 'rank') drawHeatmap();
  say(`ranked cells for ${label} in ${Math.round(performance.now() - t0)} ms`);
  flagSaturated(res.cells, text, textNo, seq);
}

/** What the concept option says it means ("inside a "string literal""), for messages. */
function conceptMeaning(request) {
  if (request.feature) return el.concept?.querySelector(`option[value="${request.feature}"]`)?.title || request.feature;
  if (request.regex) return `matched by /${request.regex}/`;
  return 'selected';
}

/** An empty state known before asking the server (an empty text), or null. */
function finderEmptyState(request) {
  if ((state.view?.header.length ?? 0) > 0) return null;
  return 'The text is empty: paste some text (code with strings, comments and if conditions works best) and Run, then rank.';
}

/** The server's "bad labels" errors, said for this page. */
function explainBadLabels(message, request) {
  const what = conceptMeaning(request);
  if (/no positive/.test(message)) {
    return request.regex ? `The regex /${request.regex}/ matches nothing in this text; try another pattern.`
      : `This text has no characters ${what}; paste code with such characters or pick another concept.`;
  }
  if (/no negative/.test(message)) return `Every character of this text is ${what}, so nothing tells the cells apart; add text where it does not hold.`;
  if (/constant/.test(message)) return `The ${request.feature ?? 'quantity'} (${what}) is the same everywhere in this text; paste text where it changes.`;
  return message;
}

/** The finder's caption, created on first use. */
function finderCaption() {
  let cap = document.getElementById('finder-caption');
  if (!cap && el.results) {
    cap = node('p', 'muted finder-caption');
    cap.id = 'finder-caption';
    el.results.before(cap);
  }
  return cap;
}

/** "text #2 (719 characters: “/* parse one line of the config file…”)" */
function textLabel() {
  const text = state.text ?? '';
  const n = state.view?.header.length ?? charCount(text);
  const first = [...text].slice(0, 40).join('').replace(/\s+/g, ' ').trim();
  return `text #${state.textNo} (${fmtInt(n)} characters${first ? `: “${first}${n > 40 ? '…' : ''}”` : ''})`;
}

function setCaption(cap, msg, extra = {}) {
  cap.textContent = msg;
  cap.dataset.textNo = String(state.textNo);
  cap.dataset.textLength = String(state.view?.header.length ?? 0);
  for (const k of ['feature', 'state']) delete cap.dataset[k];
  Object.assign(cap.dataset, extra);
}

function showFinderEmpty(msg) {
  state.ranking = [];
  el.results?.removeAttribute('aria-busy');
  el.results?.replaceChildren();
  if (el.results) el.results.hidden = true;
  const cap = finderCaption();
  if (cap) {
    setCaption(cap, msg, { state: 'empty' });
    cap.classList.add('finder-empty');
  }
  if (el.heatmapSort?.value === 'rank') drawHeatmap();
}

/**
 * A new text is shown: results ranked on the old one go. A concept or regex query
 * is ranked again on the new text; a selection belonged to the old text, so it is not.
 */
function finderTextChanged() {
  state.ranking = [];
  state.relevance.clear();
  const q = state.lastQuery;
  if (!q) return;
  state.rankSeq++; // a ranking on its way is about the old text
  if (q.request.spans) {
    state.lastQuery = null;
    el.results?.replaceChildren();
    if (el.results) el.results.hidden = true;
    const cap = finderCaption();
    if (cap) setCaption(cap, `The text changed (now ${textLabel()}): the results for the old selection are gone. Select characters of this text, then "Cells on selection".`, { state: 'cleared' });
    if (el.heatmapSort?.value === 'rank') drawHeatmap();
    return;
  }
  const cap = finderCaption();
  if (cap) setCaption(cap, `The text changed: ranking ${q.label} again on ${textLabel()}…`, { state: 'ranking' });
  el.results?.replaceChildren();
  rank(q.request, q.label, { quiet: true });
}

function showResults(res, label) {
  const list = el.results;
  if (!list) return;
  list.hidden = false;
  const metric = METRIC_LABEL[res.metric] ?? res.metric;
  const part = state.text != null ? textPart(state.text) : null;
  const items = res.cells.map((c) => {
    const sign = c.sign > 0 ? '+' : c.sign < 0 ? '−' : '±';
    return cellItem(c, `${metric} ${c.score.toFixed(3)} (${sign})`, `colour the text by this cell (signed ${metric} ${c.raw.toFixed(3)})`, part);
  });
  if (items.length === 0) items.push(node('li', 'muted', 'no cells'));
  list.replaceChildren(...items);
  markActiveResult();
  const cap = finderCaption();
  cap.classList.remove('finder-empty');
  const what = res.feature === 'spans' ? 'the selected characters' : res.feature === 'regex' ? label : res.feature;
  setCaption(cap, `Best ${res.cells.length} cells for ${what}, by ${metric}, on ${textLabel()}; ` +
    '(+) = higher where it holds. Click one to colour the text by it.', { feature: res.feature });
}

/**
 * A result line: "layer L · kind · cell N — what", an a.rank-pick that chooses the cell
 * (the finder's click handler), and a link to the cell page for the text `part`.
 */
function cellItem(c, what, title, part) {
  const li = node('li');
  li.dataset.layer = c.layer;
  li.dataset.kind = c.kind;
  li.dataset.cell = c.cell;
  const pick = node('a', 'rank-pick', `layer ${c.layer} · ${c.kind} · cell ${c.cell} — ${what}`);
  pick.href = `#layer=${c.layer}&kind=${c.kind}&cell=${c.cell}`;
  pick.dataset.layer = c.layer;
  pick.dataset.kind = c.kind;
  pick.dataset.cell = c.cell;
  pick.title = title;
  const page = node('a', 'cellpage', 'cell page');
  page.href = `/cell/${c.layer}/${c.kind}/${c.cell}${MQ}${part ? '#' + part : ''}`;
  li.append(pick, ' ', page);
  return li;
}

/** Marks the results (the finder's and the direction's) that are the chosen cell, if any. */
function markActiveResult() {
  document.querySelectorAll('#finder-results li[data-cell], #probe-cells li[data-cell]').forEach((li) => {
    const on = Number(li.dataset.layer) === state.layer && li.dataset.kind === state.kind && Number(li.dataset.cell) === state.cell;
    li.classList.toggle('active', on);
    const a = li.querySelector('a.rank-pick');
    if (on) a?.setAttribute('aria-current', 'true');
    else a?.removeAttribute('aria-current');
  });
}

/**
 * Marks the c results that sit at |c| > 2 on ≥ 90% of the text: tanh(c) shows
 * them as one flat colour. One /api/trace of just those cells' exact c.
 */
async function flagSaturated(cells, text, textNo, seq) {
  const cs = cells.filter((c) => c.kind === 'c');
  if (cs.length === 0) return;
  const layers = [...new Set(cs.map((c) => c.layer))].sort((a, b) => a - b);
  const ids = [...new Set(cs.map((c) => c.cell))].sort((a, b) => a - b);
  let res;
  try {
    res = await post('/api/trace', { text, layers, kinds: ['c'], cells: ids, top_k: 0 });
  } catch {
    return; // the flag is a hint; the results stand without it
  }
  if (seq !== state.rankSeq || textNo !== state.textNo || !el.results) return;
  for (const l of res.layers) {
    const rows = l.c;
    const T = rows.length;
    ids.forEach((cell, j) => {
      const li = el.results.querySelector(`li[data-layer="${l.layer}"][data-kind="c"][data-cell="${cell}"]`);
      if (!li || T === 0) return;
      let n = 0;
      for (const row of rows) if (Math.abs(row[j]) > SAT_ABS) n++;
      li.dataset.saturation = (n / T).toFixed(3);
      if (n / T >= SAT_FRACTION && !li.querySelector('.sat-flag')) {
        const b = node('button', 'sat-flag', 'saturated — try scale: this cell’s range');
        b.type = 'button';
        b.title = `|c| > ${SAT_ABS} on ${Math.round((100 * n) / T)}% of the characters: tanh(c) shows it nearly flat. ` +
          "Colour it by this cell's own range instead.";
        li.append(' ', b);
      }
    });
  }
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
// Concept direction: a sparse logistic probe over the h and c cells for the
// finder's concept (POST /api/probe), against the best single cell on held-out
// characters; its score can colour the text.

/** The finder's chosen concept or regex as {request, label}, or null (with a message) when the regex is empty. */
function finderQuery() {
  const concept = el.concept ? el.concept.value : 'string';
  if (concept !== 'regex') return { request: { feature: concept }, label: concept };
  const re = el.regex.value;
  if (!re) {
    setStatus('type a regex first', true);
    el.regex.focus();
    return null;
  }
  return { request: { regex: re }, label: `/${re}/` };
}

/** The direction whose score colours the text, or null. */
function shownProbe() {
  const p = state.probe;
  return p.colour && p.result && p.result.textNo === state.textNo ? p.result : null;
}

/** u = tanh(score / 2) = 2σ(score) − 1: shown like a gate, p = (u + 1)/2. */
const probeUnit = (score) => Math.tanh(score / 2);

async function runProbe() {
  const q = finderQuery();
  if (!q) return;
  if (state.text == null || state.tracing) {
    setStatus(state.text == null ? 'run the text first' : 'wait for the trace to finish: the direction is fitted on the text shown', true);
    return;
  }
  const p = state.probe;
  const seq = ++p.seq;
  const { text, textNo } = state;
  setStatus(`fitting a direction for ${q.label}…`);
  el.probeResult?.setAttribute('aria-busy', 'true');
  const t0 = performance.now();
  let res;
  try {
    // h and c only: all six kinds of a long text exceed the probe's size limit.
    res = await post('/api/probe', { text, kinds: ['h', 'c'], ...q.request });
  } catch (e) {
    if (seq !== p.seq || textNo !== state.textNo) return;
    showProbeError(probeErrorMessage(e, q));
    setStatus(`no direction for ${q.label} on this text`);
    return;
  }
  if (seq !== p.seq || textNo !== state.textNo) return;
  p.result = { ...res, label: q.label, textNo };
  showProbe();
  if (p.colour) {
    recolor();
    updateLegend();
    refreshTooltip();
  }
  setStatus(`fitted a direction for ${q.label} in ${Math.round(performance.now() - t0)} ms`);
}

/** An /api/probe error, said for this page. */
function probeErrorMessage(e, q) {
  const n = state.view?.header.length ?? 0;
  if (e.code === 'too_short' && n < 200) {
    return `A direction needs at least 200 characters (a fifth of them is held out to check it); this text has ${fmtInt(n)}. Paste a longer text.`;
  }
  if (e.code === 'too_short') return `No direction for ${q.label} on this text: ${e.message}.`;
  if (e.code === 'bad_feature') return explainBadLabels(e.message, q.request);
  return `Fitting a direction for ${q.label} failed: ${e.message}`;
}

function showProbeError(msg) {
  const p = state.probe;
  p.result = null;
  leaveProbeView();
  recolor();
  updateLegend();
  const box = el.probeResult;
  if (!box) return;
  box.hidden = false;
  box.removeAttribute('aria-busy');
  box.dataset.state = 'error';
  if (el.probeSummary) el.probeSummary.textContent = msg;
  if (el.probeSplit) el.probeSplit.textContent = '';
  if (el.probeToggle) el.probeToggle.hidden = true;
  el.probeCells?.replaceChildren();
}

function showProbe() {
  const r = state.probe.result;
  const box = el.probeResult;
  if (!box || !r) return;
  box.hidden = false;
  box.removeAttribute('aria-busy');
  box.dataset.state = 'done';
  const b = r.best_cell;
  const cells = [...r.weights].sort((x, y) => Math.abs(y.weight) - Math.abs(x.weight));
  if (el.probeSummary) {
    el.probeSummary.textContent = `${r.label}: direction of ${cells.length} cell${cells.length === 1 ? '' : 's'}: ` +
      `held-out AUC ${r.auc_heldout.toFixed(3)} vs best single cell ${b.layer}/${b.kind}/${b.cell}: ${b.auc_heldout.toFixed(3)}` +
      ` (training characters: ${r.auc_train.toFixed(3)} vs ${b.auc_train.toFixed(3)})`;
  }
  const sp = r.split;
  if (el.probeSplit) {
    const held = sp.heldout.map(([a, z]) => `${a}–${z - 1}`).join(' and ');
    el.probeSplit.textContent = `fitted on ${fmtInt(sp.train_chars)} of ${fmtInt(sp.chars)} characters; held out ${held} ` +
      `(${sp.heldout_chars} characters, ${sp.heldout.length} of ${sp.blocks} blocks), with ${sp.guard} characters on each side used by neither`;
  }
  if (el.probeToggle) el.probeToggle.hidden = false;
  const part = state.text != null ? textPart(state.text) : null;
  const title = 'colour the text by this cell (its weight in the direction, per standard deviation of the cell)';
  const items = cells.map((c) => cellItem(c, `weight ${formatSigned(c.weight, 3)}`, title, part));
  if (items.length === 0) items.push(node('li', 'muted', 'no cell enters the direction'));
  el.probeCells?.replaceChildren(...items);
  markActiveResult();
}

/** Turns the direction's colouring on or off (on turns the clamp and memory colourings off). */
function setProbeColour(on) {
  if (!on || !state.probe.result) {
    leaveProbeView();
  } else {
    state.probe.colour = true;
    leaveClampView();
    if (state.memory.mode !== 'off') setMemoryMode('off');
    if (el.legend) el.legend.dataset.colour = 'probe';
  }
  if (el.probeColour) el.probeColour.checked = state.probe.colour;
  recolor();
  updateLegend();
  refreshTooltip();
}

/** Choosing a cell or another colouring shows cells again (the direction stays listed). */
function leaveProbeView() {
  const p = state.probe;
  if (el.probeColour) el.probeColour.checked = false;
  if (!p.colour) return;
  p.colour = false;
  el.legendTitle?.removeAttribute('title');
  if (el.legend) el.legend.dataset.colour = 'cell';
}

/** Paints the text by the direction's score when it is shown; false lets the other colourings run. */
function recolorProbe() {
  const r = shownProbe();
  if (!r) return false;
  paintText(Math.min(state.spans.length, r.scores.length), (t) => unitToQ(probeUnit(r.scores[t])), 'probe');
  return true;
}

function updateProbeLegend() {
  const r = shownProbe();
  if (el.legendTitle) {
    el.legendTitle.textContent = `direction for ${r.label}: score → p(${r.label})`;
    el.legendTitle.title = `each character is coloured by the direction's score s (a weighted sum of ${r.weights.length} cells plus a bias), ` +
      'shown as p = σ(s): blue where the direction says the concept does not hold, red where it does';
  }
  const stops = el.legend ? el.legend.querySelectorAll('.stop') : [];
  stops.forEach((s, i) => {
    const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
    paintStop(s, unitToQ(u));
    s.textContent = ((u + 1) / 2).toFixed(2);
  });
  if (el.scaleNote) {
    el.scaleNote.textContent = '';
    el.scaleNote.dataset.scale = 'probe';
  }
}

function probeTooltipLine(t) {
  const r = shownProbe();
  if (!r || t >= r.scores.length) return null;
  const s = r.scores[t];
  return node('div', 'tt-mem', `direction score ${formatSigned(s, 2)} · p(${r.label}) = ${((probeUnit(s) + 1) / 2).toFixed(3)}`);
}

/** A new text: the direction was fitted on the old one. */
function probeTextChanged() {
  const p = state.probe;
  p.seq++; // a fit on its way is about the old text
  p.result = null;
  leaveProbeView();
  if (el.probeResult) {
    el.probeResult.hidden = true;
    el.probeResult.removeAttribute('aria-busy');
  }
  el.probeCells?.replaceChildren();
}

// ---------------------------------------------------------------------------
// Clamping: hold one cell at a value (POST /api/intervene) and colour the text by
// how much more or less likely the clamped model found each character.
//
// delta[t] = ln p_clamped(text[t+1] | text[..=t]) − ln p_base(the same): it is about
// character t + 1, so that character is painted with delta[t]; the first character
// is not predicted and stays white. Blue: the clamp made the actual text less likely.

/** Clamps hold h or c; a view of a gate or of g clamps the c of the same cell (its h
 *  where the model has no c: a GRU's r, z, n). */
function clampTarget() {
  const kind = state.kind === 'h' || !KINDS.includes('c') ? 'h' : 'c';
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
  if (t.viaKind) msg += ` The view shows the ${kindName(t.viaKind)}, which cannot be held: the clamp holds ${t.kind} of the same cell.`;
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
  if (mode === 'clamp') leaveProbeView();
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
  // Over the limit is refused where it happens, never cut: a paste that would pass
  // it is not pasted, and typing past it says so (Run then refuses too).
  el.text?.addEventListener('paste', (ev) => {
    const add = (ev.clipboardData?.getData('text/plain') ?? '').replace(/\r\n?/g, '\n');
    const t = el.text;
    const n = charCount(t.value.slice(0, t.selectionStart)) + charCount(add) + charCount(t.value.slice(t.selectionEnd));
    if (n <= state.maxChars) return;
    ev.preventDefault();
    showTextLimit(`Paste refused: the text would have ${fmtInt(n)} characters, and the limit is ${fmtInt(state.maxChars)}. ` +
      `Nothing was pasted; paste at most ${fmtInt(Math.max(0, state.maxChars - (n - charCount(add))))} characters here.`, 'paste');
  });
  el.text?.addEventListener('input', () => {
    if (el.textLimit?.dataset.kind === 'paste') el.textLimit.hidden = true;
    checkTextLength();
  });
  el.scale?.addEventListener('change', () => setScale(el.scale.value));
  el.wrap?.addEventListener('change', () => {
    state.wrapTouched = true;
    setWrap(el.wrap.checked);
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
  // A cell number out of range is refused with a message, never clamped silently.
  el.cell?.addEventListener('input', () => {
    const v = typedCell();
    if (v != null) setCell(v);
  });
  el.cell?.addEventListener('change', () => {
    const v = typedCell();
    if (v != null && v !== state.cell) setCell(v);
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
  window.addEventListener('hashchange', async () => {
    const text = await textOfHash(readHash());
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
    memoryAt(t);
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
    const q = finderQuery();
    if (q) rank(q.request, q.label);
  });
  el.probeRun?.addEventListener('click', runProbe);
  el.probeColour?.addEventListener('change', () => setProbeColour(el.probeColour.checked));
  el.rankSelection?.addEventListener('click', () => {
    const spans = selectionSpans();
    if (spans.length === 0) {
      setStatus('select some characters of the coloured text first', true);
      return;
    }
    const n = spans.reduce((a, [s, e]) => a + e - s, 0);
    rank({ spans }, `the selection (${n} characters)`);
  });
  const pickResult = (ev) => {
    const t = ev.target instanceof Element ? ev.target : null;
    const flag = t?.closest('button.sat-flag');
    const a = flag ? flag.closest('li')?.querySelector('a.rank-pick') : t?.closest('a.rank-pick');
    if (!a) return;
    ev.preventDefault();
    if (flag) setScale('range', false);
    choose({ layer: Number(a.dataset.layer), kind: a.dataset.kind, cell: Number(a.dataset.cell) });
    markActiveResult();
    // Show the text the result now colours (the finder sits below it).
    (el.view ?? el.colored)?.scrollIntoView({ block: 'start' });
  };
  el.results?.addEventListener('click', pickResult);
  el.probeCells?.addEventListener('click', pickResult);

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

  // Memory.
  el.memoryMode?.addEventListener('change', () => setMemoryMode(el.memoryMode.checked ? 'writes' : 'off'));
  el.gradMode?.addEventListener('change', () => setMemoryMode(el.gradMode.checked ? 'gradient' : 'off'));

  // Steered sampling.
  el.sampleForm?.addEventListener('submit', (ev) => {
    ev.preventDefault();
    runSamples();
  });
  el.sampleStop?.addEventListener('click', stopSamples);
  el.samplePrime?.addEventListener('input', () => (state.primeEdited = true));
}

async function start() {
  const measure = document.getElementById('horizon-measure');
  if (measure) {
    measure.addEventListener('click', () => {
      const horizon = measure.closest('#horizon');
      measure.disabled = true;
      horizon.dataset.state = 'measuring';
      fetch(`/api/horizon${MQ}`)
        .then(async (res) => {
          const body = await res.json();
          horizon.textContent = res.ok ? body.summary : `could not measure it: ${body.error?.message ?? res.status}`;
          horizon.dataset.state = res.ok ? 'done' : 'error';
        })
        .catch((e) => {
          horizon.textContent = `could not measure it: ${e.message}`;
          horizon.dataset.state = 'error';
        });
    });
    return;
  }
  if (!initial || !el.colored) {
    cellPage();
    return;
  }
  state.spans = Array.from(el.colored.querySelectorAll('.ch'));
  wire();
  const text = await textOfHash(readHash());
  if (text != null && el.text) el.text.value = text;
  updateControls();
  run();
}

// ---------------------------------------------------------------------------
// Memory: what the chosen cell writes and erases (exact values from POST
// /api/trace, kinds write, f and c), how far back one prediction looks (POST
// /api/saliency) and one step of the cell explained (POST /api/explain). The
// writes/erases and the gradient colourings take over the text until switched off.
//
//   write = i·g            erase = (1 − f)·|c₋₁|
//   a character is red by its write when |write| ≥ erase, else blue by its erase
//   (both over the largest of either on this text)
//   gradient: u = 1 + log₁₀(g / peak) / 4, so the peak is full red and 10⁻⁴ of it white

/** Orders of magnitude below the peak the gradient colouring spans. */
const GRAD_DECADES = 4;

const memoryKey = () => `${state.textNo}:${state.layer}:${state.cell}`;

/** The writes/erases of the chosen cell when loaded (and that mode is on), else null. */
function shownWrites() {
  return state.memory.mode === 'writes' ? state.memory.writes.get(memoryKey()) ?? null : null;
}

/** The gradient when that mode is on and it belongs to the shown text, else null. */
function shownGrad() {
  const g = state.memory.grad;
  return state.memory.mode === 'gradient' && g && g.textNo === state.textNo ? g : null;
}

function memoryShown() {
  return Boolean(shownWrites() || shownGrad());
}

function setMemoryMode(mode) {
  state.memory.mode = mode;
  if (el.memoryMode) el.memoryMode.checked = mode === 'writes';
  if (el.gradMode) el.gradMode.checked = mode === 'gradient';
  if (mode !== 'off') {
    leaveClampView();
    leaveProbeView();
  }
  if (el.legend) el.legend.dataset.colour = mode === 'off' ? 'cell' : mode;
  recolor();
  updateLegend();
  refreshTooltip();
}

/** Paints the text by the memory mode when its data is there; false lets the cell colouring run. */
function recolorMemory() {
  const n = state.spans.length;
  if (state.memory.mode === 'writes' && state.text != null) {
    const w = shownWrites();
    if (!w) {
      loadWrites();
      return false;
    }
    paintText(n, (t) => unitToQ(w.u[t]), 'writes');
    return true;
  }
  const g = shownGrad();
  if (!g) return false;
  paintText(n, (t) => unitToQ(gradUnit(g, t)), 'gradient');
  return true;
}

async function loadWrites() {
  const m = state.memory;
  const key = memoryKey();
  if (m.writesPending === key || m.writes.has(key)) return;
  m.writesPending = key;
  const { text, layer, cell } = state;
  let res;
  try {
    res = await post('/api/trace', { text, layers: [layer], kinds: ['write', 'f', 'c'], cells: [cell], top_k: 0 });
  } catch (e) {
    if (m.writesPending === key) m.writesPending = null;
    showError(e);
    return;
  }
  if (m.writesPending === key) m.writesPending = null;
  if (text !== state.text) return;
  const col = (k) => Float64Array.from(res.layers[0][k], (row) => row[0]);
  const write = col('write');
  const f = col('f');
  const c = col('c');
  const T = write.length;
  const erase = new Float64Array(T);
  let max = 1e-6;
  for (let t = 0; t < T; t++) {
    erase[t] = (1 - f[t]) * Math.abs(t > 0 ? c[t - 1] : 0);
    max = Math.max(max, Math.abs(write[t]), erase[t]);
  }
  const u = Float64Array.from(write, (w, t) => (Math.abs(w) >= erase[t] ? Math.abs(w) / max : -erase[t] / max));
  if (m.writes.size >= 32) m.writes.delete(m.writes.keys().next().value);
  m.writes.set(key, { write, erase, f, c, u, max });
  if (key === memoryKey() && m.mode === 'writes') {
    recolor();
    updateLegend();
    refreshTooltip();
  }
}

function gradUnit(g, t) {
  if (t < g.first || t > g.position) return 0;
  const v = g.grad_norm[t - g.first] / g.peak;
  return v > 0 ? Math.max(0, 1 + Math.log10(v) / GRAD_DECADES) : 0;
}

/** "1e-3" style label of 10^e. */
const decade = (e) => (e === 0 ? '1' : `1e${e}`);

function updateMemoryLegend() {
  const w = shownWrites();
  const g = shownGrad();
  const stops = el.legend ? el.legend.querySelectorAll('.stop') : [];
  if (w) {
    if (el.legendTitle) {
      el.legendTitle.textContent = `layer ${state.layer} · cell ${state.cell}: red = written |i·g|, blue = erased (1 − f)·|c₋₁|`;
      el.legendTitle.title = 'each character shows what this step did to the cell\'s memory: what it wrote (i·g), or, where larger, how much of the old memory it let go ((1 − f)·|c₋₁|)';
    }
    stops.forEach((s, i) => {
      const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
      paintStop(s, unitToQ(u));
      s.textContent = u < 0 ? `erase ${(-u * w.max).toFixed(2)}` : u > 0 ? `write ${(u * w.max).toFixed(2)}` : '0';
    });
  } else if (g) {
    if (el.legendTitle) {
      el.legendTitle.textContent = `how far back: ‖∂ ln p(${charName(g.target)}) / ∂x‖ for the prediction after position ${g.position}, against its peak (log scale)`;
      el.legendTitle.title = 'each earlier character is coloured by how much the input there moves this one prediction (the gradient\'s size), relative to the largest';
    }
    stops.forEach((s, i) => {
      const u = stops.length > 1 ? -1 + (2 * i) / (stops.length - 1) : 0;
      paintStop(s, unitToQ(Math.max(0, u)));
      s.textContent = u <= 0 ? (i === 0 ? `≤ ${decade(-GRAD_DECADES)}` : '') : decade(Math.round((u - 1) * GRAD_DECADES));
    });
  }
  if (el.scaleNote) {
    el.scaleNote.textContent = '';
    el.scaleNote.dataset.scale = 'memory';
  }
}

function memoryTooltipLine(t) {
  const w = shownWrites();
  if (w && t < w.write.length) {
    return node('div', 'tt-mem', `write ${formatSigned(w.write[t], 3)} · erase ${w.erase[t].toFixed(3)} · f ${w.f[t].toFixed(3)} · c ${formatSigned(w.c[t], 3)}`);
  }
  const g = shownGrad();
  if (g && t >= g.first && t <= g.position) {
    const v = g.grad_norm[t - g.first];
    return node('div', 'tt-mem', `gradient ${v.toExponential(2)} (${(100 * v / g.peak).toPrecision(2)}% of the peak), ${g.position - t} characters back`);
  }
  return null;
}

/** Rows by memory time scale −1/ln(mean f) from the view's 8-bit forget gates, longest first. */
function memoryOrder(T, H) {
  const f = state.view?.layer === state.layer ? state.view.data.get('f') : null;
  if (!f) return { order: null, note: 'the forget gates of this layer are not loaded (a long text loads one kind): choose kind f to sort by memory; rows by index' };
  const mean = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    const base = t * H;
    for (let c = 0; c < H; c++) mean[c] += f[base + c];
  }
  for (let c = 0; c < H; c++) mean[c] = (mean[c] / T / 127 + 1) / 2;
  const order = Array.from({ length: H }, (_, c) => c).sort((a, b) => mean[b] - mean[a] || a - b);
  const top = mean[order[0]];
  const scale = top >= 1 ? '∞' : (-1 / Math.log(top)).toFixed(1);
  return { order, note: `rows sorted by memory time scale −1/ln(mean f), longest first (cell ${order[0]}: ${scale} characters; from the view's 8-bit gates, the cell page has the exact value)` };
}

/** A new text: what was clicked on the old one no longer applies. */
function memoryTextChanged() {
  const m = state.memory;
  m.at = -1;
  m.grad = null;
  m.stepKey = '';
  m.seq++;
  if (el.memoryStep) el.memoryStep.hidden = true;
  if (el.memoryGrad) el.memoryGrad.hidden = true;
  if (el.memoryHint) el.memoryHint.hidden = false;
}

/** A click on character t: its prediction's gradient and the chosen cell's step there. */
function memoryAt(t) {
  if (!el.memoryStep && !el.memoryGrad) return;
  state.memory.at = t;
  loadStep();
  loadGrad(t);
}

async function loadStep() {
  const m = state.memory;
  const t = m.at;
  if (!el.memoryStep || t < 0 || state.text == null) return;
  const key = `${memoryKey()}:${t}`;
  if (m.stepKey === key) return;
  m.stepKey = key;
  const { text, layer, cell } = state;
  let res;
  try {
    res = await post('/api/explain', { text, position: t, layer, cell });
  } catch (e) {
    if (m.stepKey === key) m.stepKey = '';
    showError(e);
    return;
  }
  if (m.stepKey !== key) return;
  el.memoryStep.hidden = false;
  if (el.memoryHint) el.memoryHint.hidden = true;
  el.memoryStepTitle.textContent = `One step: layer ${layer} · cell ${cell} reading ${charName(res.char)} at position ${t}`;
  const extra = `write = i·g = ${formatSigned(res.write, 3)} · keep = f·c₋₁ = ${formatSigned(res.keep, 3)} · erase = (1 − f)·|c₋₁| = ${res.erase.toFixed(3)}`;
  el.memoryLines.textContent = [...res.lines, extra].join('\n');
}

async function loadGrad(t) {
  const m = state.memory;
  if (!el.memoryGrad || state.text == null) return;
  const seq = ++m.seq;
  const { text, textNo } = state;
  if (t + 1 >= charCount(text)) {
    el.memoryGrad.hidden = false;
    el.memoryGradTitle.textContent = `How far back: position ${t} is the last character; there is nothing after it to predict`;
    el.memoryPlot.replaceChildren();
    el.memoryGradCaption.textContent = '';
    return;
  }
  el.memoryGradCaption.textContent = 'backpropagating…';
  let res;
  try {
    res = await post('/api/saliency', { text, position: t });
  } catch (e) {
    if (seq === m.seq) el.memoryGradCaption.textContent = `error: ${e.message}`;
    return;
  }
  if (seq !== m.seq || text !== state.text) return;
  const peak = res.grad_norm.reduce((a, b) => Math.max(a, b), 0) || 1;
  m.grad = { ...res, textNo, peak };
  el.memoryGrad.hidden = false;
  if (el.memoryHint) el.memoryHint.hidden = true;
  el.memoryGradTitle.textContent = `How far back the prediction of ${charName(res.target)} after position ${t} looks`;
  el.memoryPlot.replaceChildren(gradPlot(res, peak));
  el.memoryGradCaption.textContent = `The gradient of ln p(${charName(res.target)}) = ${res.logp.toFixed(3)} with respect to each earlier input, ` +
    `against the distance back (log scale). It stays above 1% of its peak up to ${res.horizon_1pct} characters back; ` +
    'the model card gives the median over its reference text.';
  el.memoryGrad.dataset.horizon = String(res.horizon_1pct);
  if (state.memory.mode === 'gradient') {
    recolor();
    updateLegend();
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text != null) n.textContent = text;
  return n;
}

/** grad_norm against distance back, log y, with the 1% line and the horizon marked. */
function gradPlot(res, peak) {
  const W = 560;
  const H = 210;
  const pad = { l: 52, r: 12, t: 10, b: 34 };
  const n = res.grad_norm.length;
  const maxD = Math.max(1, n - 1);
  const lo = Math.floor(Math.log10(Math.max(peak * 1e-8, Math.min(...res.grad_norm.filter((v) => v > 0)))));
  const hi = Math.ceil(Math.log10(peak));
  const x = (d) => pad.l + ((W - pad.l - pad.r) * d) / maxD;
  const y = (v) => pad.t + ((H - pad.t - pad.b) * (hi - Math.log10(Math.max(v, 10 ** lo)))) / Math.max(1, hi - lo);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'grad-plot', role: 'img', 'aria-label': 'gradient size against distance back, log scale' });
  for (let e = lo; e <= hi; e++) {
    root.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: y(10 ** e), y2: y(10 ** e), class: 'grid' }));
    root.append(svg('text', { x: pad.l - 6, y: y(10 ** e) + 4, 'text-anchor': 'end', class: 'tick' }, decade(e)));
  }
  const step = niceStep(maxD, 6);
  for (let d = 0; d <= maxD; d += step) {
    root.append(svg('text', { x: x(d), y: H - pad.b + 16, 'text-anchor': 'middle', class: 'tick' }, String(d)));
  }
  root.append(svg('text', { x: (pad.l + W - pad.r) / 2, y: H - 4, 'text-anchor': 'middle', class: 'axis' }, 'characters back'));
  root.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: y(peak / 100), y2: y(peak / 100), class: 'one-percent' }));
  root.append(svg('line', { x1: x(res.horizon_1pct), x2: x(res.horizon_1pct), y1: pad.t, y2: H - pad.b, class: 'horizon' }));
  let d = '';
  for (let i = 0; i < n; i++) {
    const dist = res.position - (res.first + i);
    d += `${d ? 'L' : 'M'}${x(dist).toFixed(1)},${y(res.grad_norm[i]).toFixed(1)}`;
  }
  root.append(svg('path', { d, class: 'curve' }));
  return root;
}

// ---------------------------------------------------------------------------
// Cell pages (templates/cell.html, no #initial): the links keep the text a main
// page passed in the hash, and light text goes on dark backgrounds.

function cellPage() {
  const part = location.hash.replace(/^#/, '').split('&').filter((p) => /^(z|text|sample)=/.test(p)).join('&');
  document.querySelectorAll('p.cellnav a').forEach((a) => {
    const href = a.getAttribute('href');
    const m = href.match(/^\/\?layer=(\d+)&kind=([a-z]+)&cell=(\d+)(?:&model=[^#&]*)?$/);
    if (m) {
      if (part) a.href = `${href}#layer=${m[1]}&kind=${m[2]}&cell=${m[3]}&${part}`;
      a.dataset.keepsText = part ? 'true' : 'false';
    } else if (part && href.startsWith('/cell/')) {
      a.href = `${href}#${part}`;
    }
  });
  document.querySelectorAll('pre.colored .ch, .legend .stop').forEach((s) => {
    const m = getComputedStyle(s).backgroundColor.match(/\d+/g);
    if (!m) return;
    const [r, g, b] = m.map(Number);
    const lum = relativeLuminance(r, g, b);
    if (contrastRatio(lum, 1) > contrastRatio(lum, 0)) s.style.color = '#fff';
  });
}

/** The model picker (several models served): switching goes at once, keeping a main page's text. */
function modelPicker() {
  const select = document.getElementById('model-select');
  if (!select) return;
  const form = select.form;
  const go = form.querySelector('button');
  if (go) go.hidden = true;
  select.addEventListener('change', async () => {
    // A text run a moment ago may still be compressing into the hash: wait for it.
    if (state.text != null) {
      if (packed.busy) await packed.busy.catch(() => {});
      writeHash();
    }
    const keep = location.hash.replace(/^#/, '').split('&').filter((p) => /^(z|text|sample)=/.test(p)).join('&');
    const action = form.getAttribute('action') || '/';
    location.href = `${action}?model=${encodeURIComponent(select.value)}${keep ? '#' + keep : ''}`;
  });
}

modelPicker();
start();
