//! Server-rendered pages (askama). The first colouring is computed here, so the
//! page works with scripts off; `static/app.js` then takes over for live cell
//! switching, hover predictions, the heatmap and the cell finder.
//!
//! Pasted text is untrusted: every character goes through [`escape_html`] (or
//! askama's escaping), and JSON embedded in a page goes through [`script_json`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::error::AppError;
use super::json::quantize;
use super::AppState;
use crate::analysis::{c_features, Concept, GradedMetric, Labels, CONCEPTS};
use crate::display::{css_color, unit_value};
use crate::model::{Arch, Kind, Trace};

/// A sample text offered on the page.
pub struct Sample {
    pub id: &'static str,
    pub title: &'static str,
    pub text: &'static str,
}

/// The built-in samples (written for cellscope; not taken from any project).
pub const SAMPLES: &[Sample] = &[
    Sample { id: "c", title: "C: strings, comments, nested if", text: include_str!("samples/sample.c") },
    Sample { id: "prose", title: "Prose paragraph", text: include_str!("samples/prose.txt") },
];

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// JSON safe to place inside `<script type="application/json">`: `<`, `>` and `&`
/// become `\u003c`-style escapes, so `</script>` in user text cannot end the block.
pub fn script_json<T: serde::Serialize>(v: &T) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The text as one span per character, coloured by `u(t)` ∈ [−1, 1]. Newlines show
/// as ↵ (then break), tabs keep their width, unknown characters are marked.
pub fn colored_text_html(chars: &[char], u: impl Fn(usize) -> f32, unknown: &HashSet<usize>, offset: usize) -> String {
    let mut out = String::with_capacity(chars.len() * 48);
    for (t, &c) in chars.iter().enumerate() {
        let v = u(t);
        let mut class = String::from("ch");
        match c {
            '\n' => class.push_str(" nl"),
            '\t' => class.push_str(" tab"),
            ' ' => class.push_str(" sp"),
            _ => {}
        }
        if unknown.contains(&(t + offset)) {
            class.push_str(" unk");
        }
        let _ = write!(
            out,
            "<span class=\"{class}\" data-t=\"{}\" style=\"background:{};color:{}\">",
            t + offset,
            css_color(v),
            crate::display::text_on(v)
        );
        match c {
            '\n' => out.push('\u{21b5}'),
            c if c.is_control() && c != '\t' => out.push('\u{fffd}'),
            c => escape_html(&c.to_string(), &mut out),
        }
        out.push_str("</span>");
        if c == '\n' {
            out.push('\n');
        }
    }
    out
}

/// Legend stops for a kind: (inline style: background and a readable text colour, label).
fn legend(kind: Kind) -> Vec<(String, String)> {
    (0..=8)
        .map(|i| {
            let u = -1.0 + i as f32 * 0.25;
            (
                format!("background:{};color:{}", css_color(u), crate::display::text_on(u)),
                crate::display::legend_label(kind, u),
            )
        })
        .collect()
}

/// What every page's header shows: the model, the links that keep it, and a
/// picker when several models are served.
pub struct Chrome {
    pub model_name: String,
    /// The model's id (`data-model` on the page, for the script's requests).
    pub model_id: String,
    /// `?model=ID` for links from a page about a model other than the default, else "".
    pub mq: String,
    /// The same for links that already have a query, HTML-escaped (`&amp;model=ID`,
    /// the id percent-encoded, so templates insert it as is), else "".
    pub mqa: String,
    /// The served models, when there are several (else empty: no picker).
    pub models: Vec<ModelChoice>,
    /// Where the picker's form goes (the same kind of page for the other model).
    pub picker_action: &'static str,
}

pub struct ModelChoice {
    pub id: String,
    pub label: String,
    pub selected: bool,
}

impl Chrome {
    pub fn new(state: &AppState, picker_action: &'static str) -> Self {
        let (mq, mqa) = if state.is_default() {
            (String::new(), String::new())
        } else {
            let id = urlencoding_min(&state.id);
            (format!("?model={id}"), format!("&amp;model={id}"))
        };
        let models = if state.models.len() > 1 {
            state
                .models
                .iter()
                .map(|m| ModelChoice {
                    id: m.id.clone(),
                    label: format!(
                        "{} ({} × {} {})",
                        m.id,
                        m.model.layers(),
                        m.model.hidden_size(),
                        m.model.arch().name().to_uppercase()
                    ),
                    selected: m.id == state.id,
                })
                .collect()
        } else {
            Vec::new()
        };
        Self { model_name: state.model.name.clone(), model_id: state.id.clone(), mq, mqa, models, picker_action }
    }

    /// For pages about no model in particular (errors).
    fn none() -> Self {
        Self {
            model_name: String::new(),
            model_id: String::new(),
            mq: String::new(),
            mqa: String::new(),
            models: Vec::new(),
            picker_action: "/",
        }
    }
}

/// Percent-encodes what a model id could hold that a query value cannot
/// (ids are file stems, so this is rare).
fn urlencoding_min(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

struct KindOption {
    letter: &'static str,
    label: &'static str,
    selected: bool,
}

/// The kinds the model records, for the page's kind menu.
fn kind_options(arch: Arch, selected: Kind) -> Vec<KindOption> {
    arch.kinds()
        .iter()
        .map(|&k| KindOption { letter: k.letter(), label: k.describe(), selected: k == selected })
        .collect()
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    chrome: Chrome,
    layers: Vec<usize>,
    hidden: usize,
    layer: usize,
    kind_letter: &'static str,
    kind_label: &'static str,
    kinds: Vec<KindOption>,
    /// Whether the model has a cell state c (LSTM): the finder offers c then.
    has_cell: bool,
    cell: usize,
    text: String,
    samples: Vec<(&'static str, &'static str)>,
    colored: String,
    legend: Vec<(String, String)>,
    error: Option<String>,
    unknown_count: usize,
    initial_json: String,
    concepts: Vec<(&'static str, &'static str)>,
    max_text_chars: usize,
    /// The first screen's one-line explanation.
    intro: Option<String>,
}

/// What the home page hands `app.js` in `<script id="initial">`: the view the
/// server rendered, the model's shape, the samples, and the display rules per kind.
#[derive(serde::Serialize)]
struct Initial {
    layer: usize,
    kind: &'static str,
    cell: usize,
    layers: usize,
    hidden: usize,
    samples: Vec<InitialSample>,
    max_text_chars: usize,
    /// `display::kind_table` of the model's kinds.
    kinds: serde_json::Value,
}

#[derive(serde::Serialize)]
struct InitialSample {
    id: &'static str,
    title: &'static str,
    text: &'static str,
}

/// The page's view choice, from the query string or the form.
#[derive(Deserialize, Default)]
pub struct ViewQuery {
    pub sample: Option<String>,
    pub layer: Option<usize>,
    pub kind: Option<String>,
    pub cell: Option<usize>,
    pub text: Option<String>,
    /// The served model to show (`GET /api/models`); the default when absent or empty.
    pub model: Option<String>,
}

/// A page's answer when it cannot show what was asked: an error page.
pub struct PageError {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        html_error(self.status, self.title, &self.message)
    }
}

/// The state for the model a page's `?model=` names, or the error page to answer.
fn page_state(state: &AppState, model: Option<&str>) -> Result<AppState, PageError> {
    state.select(model.filter(|m| !m.is_empty())).map_err(|e| PageError {
        status: StatusCode::NOT_FOUND,
        title: "No such model",
        message: e.message,
    })
}

type ModelQueryResult = Result<Query<super::api::ModelQuery>, axum::extract::rejection::QueryRejection>;

/// [`page_state`] for a page whose only query is `?model=`.
fn page_state_query(state: &AppState, q: ModelQueryResult) -> Result<AppState, PageError> {
    match q {
        Ok(Query(q)) => page_state(state, q.model.as_deref()),
        Err(e) => Err(PageError { status: StatusCode::BAD_REQUEST, title: "Bad query string", message: e.body_text() }),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    title: &'a str,
    message: &'a str,
}

/// An error as a page (the API answers JSON instead; see `error.rs`).
pub fn html_error(status: StatusCode, title: &str, message: &str) -> Response {
    match (ErrorPage { chrome: Chrome::none(), title, message }).render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => AppError::internal(format!("rendering an error page: {e}")).into_response(),
    }
}

/// The cell a first-time visitor sees: the finder's best cell for a concept on
/// the sample, so the first screen shows something a cell has learned.
#[derive(Debug, Clone)]
pub struct FirstView {
    pub layer: usize,
    pub kind: Kind,
    pub cell: usize,
    pub concept: Concept,
    pub score: f64,
    pub sign: i8,
}

/// Ranks h and c cells of a sample's trace for string literals (then `if`
/// conditions) and keeps the best; `None` when the sample has neither.
fn choose_first_view(trace: &Trace) -> Option<FirstView> {
    let layers: Vec<usize> = (0..trace.layers.len()).collect();
    let recorded = trace.layers[0].kinds();
    let kinds: Vec<Kind> = [Kind::Cell, Kind::Hidden].into_iter().filter(|k| recorded.contains(k)).collect();
    [Concept::String, Concept::If].into_iter().find_map(|concept| {
        let labels = crate::analysis::concept_labels(&trace.chars, concept);
        let best = crate::finder::rank_trace_top(trace, &labels, &layers, &kinds, Default::default(), 1, 1)
            .ok()?
            .into_iter()
            .next()?;
        Some(FirstView {
            layer: best.layer,
            kind: best.kind,
            cell: best.cell,
            concept,
            score: best.score,
            sign: best.sign,
        })
    })
}

/// The trace the home page shows: a built-in sample's is computed once and kept
/// (the first screen never waits behind API work); pasted text waits its turn.
async fn index_trace(state: &AppState, q: &ViewQuery, sample: &Sample, text: &str) -> Result<Arc<Trace>, AppError> {
    if q.text.is_none() {
        let i = SAMPLES.iter().position(|s| std::ptr::eq(s, sample)).expect("sample listed");
        let model = state.model.clone();
        let text = sample.text;
        return state.sample_traces[i]
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || Arc::new(model.trace(text)))
                    .await
                    .map_err(|e| AppError::internal(format!("sample trace failed: {e}")))
            })
            .await
            .cloned();
    }
    super::api::check_text(state, text)?;
    super::api::with_trace(state, text.to_string(), |_, trace| trace.clone()).await
}

async fn render_index(state: AppState, q: ViewQuery) -> Response {
    let state = match page_state(&state, q.model.as_deref()) {
        Ok(s) => s,
        Err(page) => return page.into_response(),
    };
    let model = state.model.clone();
    let sample = q.sample.as_deref().and_then(|id| SAMPLES.iter().find(|s| s.id == id)).unwrap_or(&SAMPLES[0]);
    // Forms send textarea newlines as CRLF; the model (and the script path) use LF.
    let text =
        q.text.as_deref().map_or_else(|| sample.text.to_string(), |t| t.replace("\r\n", "\n").replace('\r', "\n"));
    let mut error = None;
    let mut status = StatusCode::OK;
    let trace: Option<Arc<Trace>> = match index_trace(&state, &q, sample, &text).await {
        Ok(t) => Some(t),
        Err(e) => {
            status = e.status;
            error = Some(e.message);
            None
        }
    };
    // A first visit (a sample, no choice made yet) opens on the sample's best cell.
    let first_view = match (&trace, q.text.is_none() && q.layer.is_none() && q.kind.is_none() && q.cell.is_none()) {
        (Some(tr), true) => {
            let i = SAMPLES.iter().position(|s| std::ptr::eq(s, sample)).expect("sample listed");
            let tr = tr.clone();
            state.first_views[i]
                .get_or_init(|| async move {
                    tokio::task::spawn_blocking(move || choose_first_view(&tr)).await.ok().flatten()
                })
                .await
                .clone()
        }
        _ => None,
    };
    let layer = first_view.as_ref().map_or(q.layer.unwrap_or(0), |f| f.layer).min(model.layers() - 1);
    let arch = model.arch();
    let asked = q.kind.as_deref().and_then(Kind::parse).filter(|&k| arch.has(k));
    let kind = first_view.as_ref().map_or(asked.unwrap_or(arch.default_kind()), |f| f.kind);
    let cell = first_view.as_ref().map_or(q.cell.unwrap_or(0), |f| f.cell).min(model.hidden_size() - 1);
    let intro = first_view.map(|f| {
        format!(
            "Each character is coloured by one cell of the model: layer {} · {} · cell {}, the cell the finder \
             ranks best at telling characters {} from the rest of this text (AUC {:.2}; it runs {} \
             there). Red is high, blue low; hover a \
             character for the model's next-character guesses. Try ◀ ▶ to step through cells, or Find cells \
             for if, comment or nesting depth.",
            f.layer,
            f.kind.letter(),
            f.cell,
            f.concept.description(),
            f.score,
            if f.sign > 0 { "higher" } else { "lower" },
        )
    });
    let (colored, unknown_count) = match &trace {
        Some(tr) => {
            let unknown: HashSet<usize> = tr.unknown.iter().copied().collect();
            let col = tr.layers[layer].get(kind).column(cell);
            (colored_text_html(&tr.chars, |t| unit_value(kind, col[t]), &unknown, 0), tr.unknown.len())
        }
        None => {
            let mut s = String::new();
            escape_html(&text, &mut s);
            (s, 0)
        }
    };
    let initial = Initial {
        layer,
        kind: kind.letter(),
        cell,
        layers: model.layers(),
        hidden: model.hidden_size(),
        samples: SAMPLES.iter().map(|s| InitialSample { id: s.id, title: s.title, text: s.text }).collect(),
        max_text_chars: state.limits.max_text_chars,
        kinds: crate::display::kind_table(model.arch().kinds()),
    };
    let page = IndexPage {
        chrome: Chrome::new(&state, "/"),
        layers: (0..model.layers()).collect(),
        hidden: model.hidden_size(),
        layer,
        kind_letter: kind.letter(),
        kind_label: kind.describe(),
        kinds: kind_options(arch, kind),
        has_cell: arch.has_cell(),
        cell,
        text,
        samples: SAMPLES.iter().map(|s| (s.id, s.title)).collect(),
        colored,
        legend: legend(kind),
        error,
        unknown_count,
        initial_json: script_json(&initial),
        concepts: CONCEPTS.iter().map(|c| (c.name(), c.description())).collect(),
        max_text_chars: state.limits.max_text_chars,
        intro,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => AppError::internal(format!("rendering index: {e}")).into_response(),
    }
}

/// `GET /` (optionally `?sample=prose&layer=1&kind=c&cell=42`).
pub async fn index(
    State(state): State<AppState>,
    q: Result<Query<ViewQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => render_index(state, q).await,
        Err(e) => html_error(StatusCode::BAD_REQUEST, "Bad query string", &e.body_text()),
    }
}

/// `POST /`: the form, for browsers without scripts.
pub async fn index_post(State(state): State<AppState>, form: Result<Form<ViewQuery>, FormRejection>) -> Response {
    match form {
        Ok(Form(q)) => render_index(state, q).await,
        Err(e) => form_error(&e),
    }
}

/// The error page for a form that could not be read (413 when it was too large).
pub fn form_error(e: &FormRejection) -> Response {
    let status = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { e.status() } else { StatusCode::BAD_REQUEST };
    html_error(status, "Bad form", &e.body_text())
}

/// One gate kind's (fraction > 0.9, fraction < 0.1) per cell.
pub type GateSaturation = (Kind, Vec<(f32, f32)>);

/// The reference text's activations, quantised to one byte (as in the view
/// format) and stored cell-major so one cell's column is contiguous.
pub struct ReferenceTrace {
    pub chars: Vec<char>,
    pub hidden: usize,
    /// The kinds `data` holds, in its order (the model's [`Arch::kinds`]).
    pub kinds: &'static [Kind],
    /// [layer][kind index][cell · T + t]
    pub data: Vec<Vec<Vec<i8>>>,
    /// Per layer, per gate (i, f, o): per cell (fraction > 0.9, fraction < 0.1).
    pub saturation: Vec<Vec<GateSaturation>>,
    pub labels: Vec<(Concept, Labels)>,
    /// Per layer, per cell: the mean of the exact forget gate over the text.
    pub mean_forget: Vec<Vec<f64>>,
}

impl ReferenceTrace {
    fn build(model: &crate::model::Model, text: &str, threads: usize) -> Self {
        let trace = model.trace_clamped_with_threads(model.vocab.encode(text), &model.zero_state(), &[], threads);
        let t_len = trace.len();
        let hidden = model.hidden_size();
        let data =
            trace.layers.iter().map(|l| l.iter().map(|(kind, m)| cell_major(kind, m.view())).collect()).collect();
        let saturation = trace
            .layers
            .iter()
            .map(|l| {
                model
                    .arch()
                    .gate_kinds()
                    .iter()
                    .map(|&k| (k, crate::analysis::saturation(l.get(k).view(), 0.1, 0.9)))
                    .collect()
            })
            .collect();
        let feats = c_features(&trace.chars);
        let labels = CONCEPTS.iter().map(|&c| (c, feats.labels(c))).collect();
        let mean_forget = trace
            .layers
            .iter()
            .map(|l| {
                l.try_get(Kind::Forget).map_or_else(Vec::new, |f| {
                    f.columns()
                        .into_iter()
                        .map(|col| col.iter().map(|&v| f64::from(v)).sum::<f64>() / t_len.max(1) as f64)
                        .collect()
                })
            })
            .collect();
        Self { chars: trace.chars, hidden, kinds: model.arch().kinds(), data, saturation, labels, mean_forget }
    }

    /// One cell's values as unit values u ∈ [−1, 1].
    pub fn column(&self, layer: usize, kind: Kind, cell: usize) -> Vec<f32> {
        let ki = self.kinds.iter().position(|&k| k == kind).expect("cell paths are checked against the model's kinds");
        let t_len = self.chars.len();
        self.data[layer][ki][cell * t_len..(cell + 1) * t_len].iter().map(|&q| q as f32 / 127.0).collect()
    }
}

/// A T × H matrix of `kind` as view bytes, cell-major (`[c · T + t]`), transposed
/// in 64 × 64 tiles so that reads and writes both stay in cache.
fn cell_major(kind: Kind, m: ndarray::ArrayView2<f32>) -> Vec<i8> {
    const TILE: usize = 64;
    let (t_len, hidden) = m.dim();
    let m = m.as_standard_layout();
    let src = m.as_slice().expect("standard layout");
    let mut v = vec![0i8; t_len * hidden];
    for t0 in (0..t_len).step_by(TILE) {
        let ts = t0..(t0 + TILE).min(t_len);
        for c0 in (0..hidden).step_by(TILE) {
            for c in c0..(c0 + TILE).min(hidden) {
                for t in ts.clone() {
                    v[c * t_len + t] = quantize(unit_value(kind, src[t * hidden + c])) as i8;
                }
            }
        }
    }
    v
}

/// The reference trace, computed once on the blocking pool (on both cores when
/// nothing else runs).
pub async fn reference_trace(state: &AppState) -> Result<std::sync::Arc<ReferenceTrace>, AppError> {
    let st = state.clone();
    state
        .reference_trace
        .get_or_try_init(|| async move {
            let model = st.model.clone();
            let text = st.reference.clone();
            let threads = super::api::threads_now(&st.queue);
            tokio::task::spawn_blocking(move || std::sync::Arc::new(ReferenceTrace::build(&model, &text, threads)))
                .await
                .map_err(|e| AppError::internal(format!("reference trace failed: {e}")))
        })
        .await
        .cloned()
}

struct ContextRow {
    value: String,
    html: String,
}

struct ConceptRow {
    name: &'static str,
    metric: &'static str,
    score: String,
    sign: &'static str,
}

#[derive(Template)]
#[template(path = "cell.html")]
struct CellPage {
    chrome: Chrome,
    layer: usize,
    kind_letter: &'static str,
    kind_label: &'static str,
    cell: usize,
    hidden: usize,
    prev: usize,
    next: usize,
    reference_name: String,
    reference_len: usize,
    top: Vec<ContextRow>,
    bottom: Vec<ContextRow>,
    histogram_svg: String,
    concepts: Vec<ConceptRow>,
    legend: Vec<(String, String)>,
    /// Top-layer h cells: (character, decoder weight) most promoted / suppressed.
    promotes: Vec<(String, String)>,
    suppresses: Vec<(String, String)>,
    /// Every kind's letter, for the links to the same cell's other kinds.
    kinds: Vec<&'static str>,
    /// The cell's memory time scale, in words.
    memory: String,
}

fn context_rows(rt: &ReferenceTrace, values: &[f32], contexts: &[Context], kind: Kind) -> Vec<ContextRow> {
    let none = HashSet::new();
    contexts
        .iter()
        .map(|w| {
            let shown = match crate::display::scale(kind) {
                crate::display::Scale::Signed => format!("{:+.3}", w.value),
                crate::display::Scale::Squashed => format!("{} {:+.3}", crate::display::shows(kind), w.value),
                crate::display::Scale::Gate => format!("{:.3}", (w.value + 1.0) / 2.0),
            };
            // The character the value belongs to is wrapped in `.centre` (outlined by
            // style.css), so a reader sees which one of the window's characters it is.
            let part = |a: usize, b: usize| colored_text_html(&rt.chars[a..b], |t| values[a + t], &none, a);
            let c = w.position.clamp(w.start, w.end.saturating_sub(1).max(w.start));
            let html = if c < w.end {
                format!(
                    "{}<span class=\"centre\" title=\"the value listed is this character's (position {c})\">{}</span>{}",
                    part(w.start, c),
                    part(c, c + 1),
                    part(c + 1, w.end)
                )
            } else {
                part(w.start, w.end)
            };
            ContextRow { value: shown, html }
        })
        .collect()
}

/// `n` with thousands separators: 3402337 → "3,402,337".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Parses `/cell/{layer}/{kind}/{n}`'s parts, or gives an error code (`bad_kind` for
/// a kind this model's architecture lacks, else `bad_cell`) and says what a valid
/// path looks like.
pub fn parse_cell_path(
    model: &crate::model::Model,
    layer: &str,
    kind: &str,
    n: &str,
) -> Result<(usize, Kind, usize), (&'static str, String)> {
    let arch = model.arch();
    let l: Option<usize> = layer.parse().ok().filter(|&l| l < model.layers());
    let k = Kind::parse(kind);
    let c: Option<usize> = n.parse().ok().filter(|&c| c < model.hidden_size());
    let code = if k.is_some_and(|k| !arch.has(k)) { "bad_kind" } else { "bad_cell" };
    match (l, k.filter(|&k| arch.has(k)), c) {
        (Some(l), Some(k), Some(c)) => Ok((l, k, c)),
        _ => Err((
            code,
            format!(
                "no cell {layer}/{kind}/{n}: cells are /cell/LAYER/KIND/N with LAYER in 0..={}, KIND one of {} (this \
                 is a {arch} model), N in 0..={}",
                model.layers() - 1,
                arch.kind_list(),
                model.hidden_size() - 1
            ),
        )),
    }
}

/// How well a cell tracks one concept over the reference text.
#[derive(serde::Serialize)]
pub struct ConceptScore {
    pub concept: &'static str,
    /// `AUC` (yes/no concepts) or `r` (graded ones).
    pub metric: &'static str,
    /// max(AUC, 1 − AUC) or |r|.
    pub score: f64,
    /// +1 if the cell is higher inside the concept (or rises with it), −1 if lower,
    /// 0 if neither (AUC exactly ½ or r exactly 0).
    pub sign: i8,
}

/// One of a cell's most extreme places in the reference text.
#[derive(serde::Serialize)]
pub struct Context {
    /// The character carrying the value, and the shown window `[start, end)`.
    pub position: usize,
    pub start: usize,
    pub end: usize,
    /// The value as shown (tanh(c) for c; see `/api/view`'s decode).
    pub value: f32,
    pub text: String,
}

/// Everything a cell page shows, as data (`GET /api/cell/...` answers it).
#[derive(serde::Serialize)]
pub struct CellProfile {
    pub layer: usize,
    pub kind: &'static str,
    pub cell: usize,
    pub reference: String,
    pub reference_chars: usize,
    pub concepts: Vec<ConceptScore>,
    /// 40 bins over the shown range [−1, 1].
    pub histogram: Vec<u32>,
    pub top_contexts: Vec<Context>,
    pub bottom_contexts: Vec<Context>,
    /// For top-layer h cells: the characters it promotes and suppresses directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_effect: Option<super::causal::LogitEffect>,
    /// The cell's mean forget gate over the reference text (`null` for a model
    /// without one: GRU, RNN).
    pub mean_forget: Option<f64>,
    /// Its memory time scale, `−1 / ln(mean f)` characters (`null` when mean f
    /// rounds to 1, the cell never forgets, or there is no forget gate).
    pub time_scale: Option<f64>,
    #[serde(skip)]
    values: Vec<f32>,
}

/// Computes a cell's profile over the reference text.
pub async fn cell_profile(state: &AppState, layer: usize, kind: Kind, cell: usize) -> Result<CellProfile, AppError> {
    let rt = reference_trace(state).await?;
    let values = rt.column(layer, kind, cell);
    // The finder's own scoring, on this one column (a concept the reference text
    // lacks, or that is constant over it, is left out).
    let column = ndarray::ArrayView2::from_shape((values.len(), 1), &values[..])
        .map_err(|e| AppError::internal(format!("a cell's column: {e}")))?;
    let mut concepts: Vec<ConceptScore> = rt
        .labels
        .iter()
        .filter_map(|(c, labels)| {
            let scored = crate::analysis::rank_columns(column, labels, GradedMetric::Pearson).ok()?;
            let first = scored.first()?;
            let metric = if matches!(labels, Labels::Binary(_)) { "AUC" } else { "r" };
            Some(ConceptScore { concept: c.name(), metric, score: first.score, sign: first.sign })
        })
        .collect();
    concepts.sort_by(|a, b| b.score.total_cmp(&a.score));
    let found = crate::finder::contexts_of(&values, &rt.chars, 20, 40);
    let contexts = |cs: &[crate::finder::Context]| {
        cs.iter()
            .map(|c| Context { position: c.center, start: c.start, end: c.end, value: c.value, text: c.text.clone() })
            .collect()
    };
    let model = &state.model;
    let mean_forget = rt.mean_forget.get(layer).and_then(|l| l.get(cell)).copied();
    let time_scale = mean_forget.map(crate::model::time_scale).filter(|t| t.is_finite());
    Ok(CellProfile {
        mean_forget,
        time_scale,
        layer,
        kind: kind.letter(),
        cell,
        reference: state.reference_name.to_string(),
        reference_chars: rt.chars.len(),
        concepts,
        histogram: crate::analysis::histogram(&values, 40, -1.0, 1.0),
        top_contexts: contexts(&found.highest),
        bottom_contexts: contexts(&found.lowest),
        logit_effect: (kind == Kind::Hidden && layer + 1 == model.layers())
            .then(|| super::causal::logit_effect(model, cell)),
        values,
    })
}

/// `GET /cell/{layer}/{kind}/{n}`
pub async fn cell(
    State(state): State<AppState>,
    Path((layer, kind, n)): Path<(String, String, String)>,
    q: ModelQueryResult,
) -> Response {
    let state = match page_state_query(&state, q) {
        Ok(s) => s,
        Err(page) => return page.into_response(),
    };
    let model = state.model.clone();
    let (layer, kind, cell) = match parse_cell_path(&model, &layer, &kind, &n) {
        Ok(x) => x,
        Err((_, m)) => return html_error(StatusCode::NOT_FOUND, "No such cell", &m),
    };
    let profile = match cell_profile(&state, layer, kind, cell).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let rt = match reference_trace(&state).await {
        Ok(rt) => rt,
        Err(e) => return e.into_response(),
    };
    let concepts = profile
        .concepts
        .iter()
        .map(|c| ConceptRow {
            name: c.concept,
            metric: c.metric,
            score: format!("{:.3}", c.score),
            sign: match c.sign {
                1.. => "+",
                0 => "±",
                _ => "−",
            },
        })
        .collect();
    let effect = |gs: &[super::json::Guess]| {
        gs.iter().map(|g| (crate::display::shown_char(&g.char), format!("{:+.2}", g.p))).collect::<Vec<_>>()
    };
    let page = CellPage {
        chrome: Chrome::new(&state, "/"),
        layer,
        kind_letter: kind.letter(),
        kind_label: kind.describe(),
        cell,
        hidden: model.hidden_size(),
        prev: if cell == 0 { model.hidden_size() - 1 } else { cell - 1 },
        next: (cell + 1) % model.hidden_size(),
        reference_name: profile.reference.clone(),
        reference_len: profile.reference_chars,
        top: context_rows(&rt, &profile.values, &profile.top_contexts, kind),
        bottom: context_rows(&rt, &profile.values, &profile.bottom_contexts, kind),
        histogram_svg: super::plots::histogram_svg(&profile.histogram, kind),
        concepts,
        legend: legend(kind),
        promotes: profile.logit_effect.as_ref().map(|e| effect(&e.promotes)).unwrap_or_default(),
        suppresses: profile.logit_effect.as_ref().map(|e| effect(&e.suppresses)).unwrap_or_default(),
        kinds: model.arch().kinds().iter().map(|k| k.letter()).collect(),
        memory: match (profile.time_scale, profile.mean_forget) {
            (Some(t), Some(f)) => format!(
                "Memory time scale: {t:.1} characters (−1 / ln of its mean forget gate, {f:.4}, over the reference text): \
                 left alone, its memory shrinks by 1/e in that many steps."
            ),
            (_, Some(_)) => "Memory time scale: unbounded (its forget gate averages 1 over the reference text).".into(),
            _ => String::new(),
        },
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => AppError::internal(format!("rendering cell page: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "model.html")]
struct ModelPage {
    chrome: Chrome,
    rows: Vec<(String, String)>,
    tensors: Vec<(String, String)>,
    curve_svg: String,
    saturation_svg: String,
    train_json: String,
    reference_name: String,
    /// The memory horizon in words, when it has been measured.
    horizon: Option<String>,
    horizon_positions: usize,
    horizon_max_back: usize,
}

/// The memory horizon in words, for the model card (and the page's script, which
/// fills it in from `GET /api/horizon` when it was not measured yet).
pub fn horizon_words(h: &crate::model::Horizon) -> String {
    format!(
        "Median {:.0} characters (quartiles {:.0}–{:.0}) over {} positions.",
        h.median,
        h.quartiles[0],
        h.quartiles[1],
        h.horizons.len()
    )
}

/// `GET /model`
pub async fn model_card(State(state): State<AppState>, q: ModelQueryResult) -> Response {
    let state = match page_state_query(&state, q) {
        Ok(s) => s,
        Err(page) => return page.into_response(),
    };
    let model = state.model.clone();
    let rt = match reference_trace(&state).await {
        Ok(rt) => rt,
        Err(e) => return e.into_response(),
    };
    let t = &model.train;
    let num = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
    let rows = vec![
        ("Architecture".into(), format!("{} × {} {}", model.layers(), model.hidden_size(), model.arch().title())),
        ("Parameters".into(), thousands(model.weights().param_count() as u64)),
        ("Vocabulary".into(), format!("{} characters", model.vocab.len())),
        ("Input".into(), if model.weights().embedding.is_some() { "embedding".into() } else { "one-hot".into() }),
        ("Best validation loss (nats/char)".into(), num(t.best_val_loss)),
        ("Test loss (nats/char)".into(), num(t.test_loss)),
        ("Training steps".into(), t.steps.map_or("—".into(), |v| v.to_string())),
        ("Training time".into(), t.train_seconds.map_or("—".into(), |s| format!("{:.1} h", s / 3600.0))),
        ("Corpus".into(), t.corpus.as_deref().unwrap_or("—").to_string()),
    ];
    let tensors = model.weights().named_tensors().into_iter().map(|(n, s, _)| (n, format!("{s:?}"))).collect();
    // The curve is drawn; the rest is shown as it is stored.
    let train = crate::model::TrainMeta { curve: Vec::new(), ..t.clone() };
    let page = ModelPage {
        chrome: Chrome::new(&state, "/model"),
        rows,
        tensors,
        curve_svg: super::plots::curve_svg(&t.curve),
        saturation_svg: super::plots::saturation_svg(&rt),
        train_json: serde_json::to_string_pretty(&train).unwrap_or_default(),
        reference_name: state.reference_name.to_string(),
        horizon: state.horizon.get().map(horizon_words),
        horizon_positions: super::memory::HORIZON_POSITIONS,
        horizon_max_back: super::memory::HORIZON_MAX_BACK,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => AppError::internal(format!("rendering model page: {e}")).into_response(),
    }
}

/// Unknown paths: JSON under `/api`, a page elsewhere.
pub async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        AppError::not_found(format!("no API route {}; see /api/openapi.json", uri.path())).into_response()
    } else {
        html_error(StatusCode::NOT_FOUND, "Not found", &format!("Nothing lives at {}.", uri.path()))
    }
}

/// Wrong method on a known path.
pub async fn method_not_allowed(uri: Uri) -> Response {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take this method; see /api/openapi.json", uri.path()),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        let mut s = String::new();
        escape_html("</script><script>alert(1)</script>\"'&\0", &mut s);
        assert!(!s.contains('<') && !s.contains('"') && !s.contains('\0'), "{s}");
        let j = script_json(&serde_json::json!({"t": "</script><b>&"}));
        assert!(!j.contains("</script>") && !j.contains('<') && !j.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["t"], "</script><b>&");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(3_402_337), "3,402,337");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(0), "0");
    }

    #[test]
    fn colored_text_keeps_every_character() {
        let chars: Vec<char> = "a\tb\n<c>".chars().collect();
        let html = colored_text_html(&chars, |_| 0.0, &HashSet::from([6]), 0);
        assert_eq!(html.matches("<span").count(), chars.len());
        assert!(html.contains("&lt;") && html.contains('\u{21b5}') && html.contains("unk"));
    }
}
