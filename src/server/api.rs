//! JSON API handlers (DESIGN §5). Each one validates its request completely before
//! doing any work, then runs the model off the async runtime.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::{AppError, JsonBody};
use super::json::{trace_json, trace_json_size, trace_npy, view_bytes};
use super::AppState;
use crate::analysis::{concept_labels, regex_mask, span_mask, Concept, GradedMetric, Labels};
use crate::model::{Arch, Kind, Model, Precision, Trace};

/// `GET /api/model`'s answer: the loaded model and this server's limits.
#[derive(Serialize)]
pub struct ModelInfo<'a> {
    /// What requests name it by (`model`).
    pub id: &'a str,
    pub name: &'a str,
    pub arch: &'static str,
    pub layers: usize,
    pub hidden_size: usize,
    /// Each character of the vocabulary, in id order.
    pub vocab: Vec<String>,
    pub params: usize,
    /// The model file's `cellscope.train` metadata.
    pub train: &'a crate::model::TrainMeta,
    pub limits: LimitsInfo,
}

/// The request limits a client should know (serve flags).
#[derive(Serialize)]
pub struct LimitsInfo {
    pub max_body_bytes: usize,
    pub max_text_chars: usize,
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub max_response_bytes: usize,
}

/// `?model=ID` in a URL (`None`: the default model).
#[derive(Deserialize, Default)]
pub struct ModelQuery {
    pub model: Option<String>,
}

/// The state of the model a GET request's `?model=ID` names (the default
/// without one); an unknown id is 400 `unknown_model`.
pub struct Picked(pub AppState);

impl axum::extract::FromRequestParts<AppState> for Picked {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, AppError> {
        let Query(q) = Query::<ModelQuery>::try_from_uri(&parts.uri)
            .map_err(|e| AppError::invalid("bad_query", format!("bad query string: {}", e.body_text())))?;
        state.select(q.model.as_deref()).map(Picked)
    }
}

/// `GET /api/model` (`?model=ID` for another served model)
pub async fn model_info(Picked(state): Picked) -> Response {
    Json(state.model_info()).into_response()
}

/// One served model in `GET /api/models`.
#[derive(Serialize, Clone)]
pub struct ModelSummary {
    pub id: String,
    pub name: String,
    pub arch: &'static str,
    pub layers: usize,
    pub hidden_size: usize,
    pub params: usize,
    /// Test loss in nats per character, from the model file, when it was measured.
    pub test_loss: Option<f64>,
    /// Whether requests without `model` go to it.
    pub default: bool,
}

/// `GET /api/models`' answer.
#[derive(Serialize)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// `GET /api/models`: every served model, the default first.
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { models: model_summaries(&state) })
}

/// The served models, the default first.
pub fn model_summaries(state: &AppState) -> Vec<ModelSummary> {
    state
        .models
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let m = &s.model;
            ModelSummary {
                id: s.id.clone(),
                name: m.name.clone(),
                arch: m.arch().name(),
                layers: m.layers(),
                hidden_size: m.hidden_size(),
                params: m.weights().param_count(),
                test_loss: m.train.test_loss,
                default: i == 0,
            }
        })
        .collect()
}

/// `GET /healthz`'s answer.
#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /healthz`
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /api/openapi.json`
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub layers: Option<Vec<usize>>,
    pub kinds: Option<Vec<String>>,
    pub cells: Option<Vec<usize>>,
    pub top_k: Option<usize>,
}

#[derive(Deserialize, Default)]
pub struct FormatQuery {
    pub format: Option<String>,
}

/// Checks the text against the configured length limit (413 `text_too_long`).
pub fn check_text(state: &AppState, text: &str) -> Result<(), AppError> {
    let n = text.chars().count();
    if n > state.limits.max_text_chars {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text_too_long",
            format!(
                "text has {n} characters; this server accepts at most {} (server flag --max-text-chars)",
                state.limits.max_text_chars
            ),
        ));
    }
    Ok(())
}

/// Parses kind letters, each one the model's architecture records; `None` gives `default`.
pub fn parse_kinds(kinds: Option<&[String]>, arch: Arch, default: &[Kind]) -> Result<Vec<Kind>, AppError> {
    let Some(kinds) = kinds else {
        return Ok(default.to_vec());
    };
    let list = arch.kind_list();
    if kinds.is_empty() {
        return Err(AppError::invalid("bad_kind", format!("kinds is empty; give some of {list}")));
    }
    let mut out = Vec::new();
    for k in kinds {
        let kind = parse_kind(k, arch)?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// One kind letter that the model's architecture records, or `bad_kind`.
pub fn parse_kind(k: &str, arch: Arch) -> Result<Kind, AppError> {
    let kind = Kind::parse(k).ok_or_else(|| {
        AppError::invalid("bad_kind", format!("unknown kind {k:?}; this {arch} model records {}", arch.kind_list()))
    })?;
    arch.check_kind(kind).map_err(|e| AppError::invalid("bad_kind", e.to_string()))
}

/// Checks layer indices; `None` gives all layers.
pub fn parse_layers(state: &AppState, layers: Option<&[usize]>) -> Result<Vec<usize>, AppError> {
    let n = state.model.layers();
    match layers {
        None => Ok((0..n).collect()),
        Some([]) => Err(AppError::invalid(
            "bad_layer",
            format!("layers is empty; list some of 0..={} or leave it out for all", n - 1),
        )),
        Some(ls) => {
            if let Some(&l) = ls.iter().find(|&&l| l >= n) {
                return Err(AppError::invalid(
                    "bad_layer",
                    format!("layer {l} does not exist; the model has layers 0..={}", n - 1),
                ));
            }
            Ok(dedup(ls))
        }
    }
}

pub fn parse_cells(state: &AppState, cells: Option<&[usize]>) -> Result<Option<Vec<usize>>, AppError> {
    let h = state.model.hidden_size();
    match cells {
        None => Ok(None),
        Some([]) => Err(AppError::invalid(
            "bad_cell",
            format!("cells is empty; list some of 0..={} or leave it out for all", h - 1),
        )),
        Some(cs) => {
            if let Some(&c) = cs.iter().find(|&&c| c >= h) {
                return Err(AppError::invalid(
                    "bad_cell",
                    format!("cell {c} does not exist; layers have cells 0..={}", h - 1),
                ));
            }
            Ok(Some(dedup(cs)))
        }
    }
}

/// The distinct values in first-seen order: a repeated layer or cell would only
/// multiply the answer's size, never add information.
fn dedup(xs: &[usize]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::with_capacity(xs.len());
    xs.iter().copied().filter(|x| seen.insert(*x)).collect()
}

/// Refuses an answer larger than `--max-response-bytes` before any work is done,
/// saying how to ask for less.
pub fn check_answer_size(state: &AppState, bytes: u128, what: &str, how_to_shrink: &str) -> Result<(), AppError> {
    let limit = state.limits.max_response_bytes as u128;
    if bytes > limit {
        return Err(AppError::too_large(
            "answer_too_large",
            format!(
                "{what} would take about {} MB, over this server's {} MB limit (server flag --max-response-bytes); \
                 {how_to_shrink}",
                bytes.div_ceil(1_000_000),
                limit / 1_000_000
            ),
        ));
    }
    Ok(())
}

pub fn parse_top_k(state: &AppState, top_k: Option<usize>, default: usize) -> Result<usize, AppError> {
    let v = state.model.vocab.len();
    let k = top_k.unwrap_or(default);
    if k > v {
        return Err(AppError::invalid("bad_top_k", format!("top_k {k} exceeds the vocabulary size {v}")));
    }
    Ok(k)
}

/// The trace of `text` — from the cache of recent traces, or computed — turned
/// into an answer, both inside a model slot, so the slot count bounds the memory
/// of traces in flight (the cache's own budget bounds the rest).
pub async fn with_trace<R: Send + 'static>(
    state: &AppState,
    text: String,
    answer: impl FnOnce(&Model, &std::sync::Arc<Trace>) -> R + Send + 'static,
) -> Result<R, AppError> {
    let (served, cache, queue) = (state.served.clone(), state.traces.clone(), state.queue.clone());
    state
        .queue
        .run(move || {
            let threads = trace_threads_now(&queue, text.chars().count());
            answer(&served.model, &cached_trace_at(&cache, &served, &text, Precision::Exact, threads))
        })
        .await
}

/// The trace of `text` by the served model, from `cache`, or computed on
/// `threads` threads and kept there. Call it inside a model slot.
pub fn cached_trace(
    cache: &super::cache::TraceCache,
    served: &super::Served,
    text: &str,
    threads: usize,
) -> std::sync::Arc<Trace> {
    cached_trace_at(cache, served, text, Precision::Exact, threads)
}

/// [`cached_trace`] at `precision`; the two precisions never share an entry.
fn cached_trace_at(
    cache: &super::cache::TraceCache,
    served: &super::Served,
    text: &str,
    precision: Precision,
    threads: usize,
) -> std::sync::Arc<Trace> {
    let key = super::cache::key_at(&served.id, text, precision);
    cache.get_or_compute(key, || served.model.trace_at_with_threads(text, precision, threads))
}

/// Shortest text traced on two threads: below it the pipeline's fill (one
/// block of steps) and the thread start weigh more than they save.
const PIPELINE_MIN_CHARS: usize = 256;

/// Threads for a trace of `chars` characters, asked inside the run's slot:
/// `CELLSCOPE_TRACE_THREADS` when set; else two (where there are two cores) for
/// a text of at least [`PIPELINE_MIN_CHARS`] when this run is the server's only
/// one, so that a lone reader's trace uses the idle core (its layers pipelined,
/// `model::lstm`) and a busy server keeps one run per core. The server cannot
/// see other programs: on a machine busy with other work, set
/// `CELLSCOPE_TRACE_THREADS=1`.
pub(super) fn trace_threads_now(queue: &super::queue::WorkQueue, chars: usize) -> usize {
    if chars >= PIPELINE_MIN_CHARS {
        threads_now(queue)
    } else {
        1
    }
}

/// Threads one long model run may use now: `CELLSCOPE_TRACE_THREADS` if set, else
/// two (where there are two cores) when no other run holds or awaits a slot, one
/// otherwise (see [`trace_threads_now`]).
pub(super) fn threads_now(queue: &super::queue::WorkQueue) -> usize {
    if let Some(n) = crate::model::trace_threads_set() {
        return n;
    }
    if queue.alone() {
        crate::model::cores().min(2)
    } else {
        1
    }
}

fn wants_npy(query: &FormatQuery, headers: &HeaderMap) -> Result<bool, AppError> {
    match query.format.as_deref() {
        Some("npy") => return Ok(true),
        Some("json") => return Ok(false),
        Some(other) => {
            return Err(AppError::invalid("bad_format", format!("unknown format {other:?}; use json or npy")))
        }
        None => {}
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Ok(accept.contains("application/octet-stream"))
}

/// `POST /api/trace` (JSON, or `.npy` with `?format=npy`).
pub async fn trace(
    State(state): State<AppState>,
    Query(query): Query<FormatQuery>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TraceRequest>,
) -> Result<Response, AppError> {
    let state = state.select(req.model.as_deref())?;
    let npy = wants_npy(&query, &headers)?;
    check_text(&state, &req.text)?;
    let layers = parse_layers(&state, req.layers.as_deref())?;
    let arch = state.model.arch();
    let kinds = parse_kinds(req.kinds.as_deref(), arch, arch.default_kinds())?;
    let cells = parse_cells(&state, req.cells.as_deref())?;
    let top_k = parse_top_k(&state, req.top_k, 5)?;
    let t_len = req.text.chars().count();
    let per_char = layers.len() * kinds.len() * cells.as_ref().map_or(state.model.hidden_size(), Vec::len);
    let shrink = "ask for fewer layers, kinds or cells";
    if npy {
        check_answer_size(&state, t_len as u128 * per_char as u128 * 4, "this .npy answer", shrink)?;
    } else {
        check_answer_size(
            &state,
            trace_json_size(t_len, per_char, top_k),
            "this JSON answer",
            &format!("{shrink}, a smaller top_k, or ?format=npy (4 bytes a value)"),
        )?;
    }
    let kinds_hdr = kinds.iter().map(|k| k.letter()).collect::<Vec<_>>().join(",");
    let layers_hdr = layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
    let body = with_trace(&state, req.text, move |model, trace| {
        if npy {
            Ok(trace_npy(trace, &layers, &kinds, cells.as_deref()))
        } else {
            serde_json::to_vec(&trace_json(model, trace, Some(&layers), &kinds, cells.as_deref(), top_k))
                .map_err(|e| AppError::internal(format!("serialising the trace: {e}")))
        }
    })
    .await??;
    if npy {
        return Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"trace.npy\"".to_string()),
                (header::HeaderName::from_static("x-cellscope-layers"), layers_hdr),
                (header::HeaderName::from_static("x-cellscope-kinds"), kinds_hdr),
            ],
            body,
        )
            .into_response());
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub layer: Option<usize>,
    pub kinds: Option<Vec<String>>,
    pub top_k: Option<usize>,
    /// `true`: trace in f32 as `/api/trace` does. Default: an LSTM's view is traced
    /// with int8 recurrent weights (`model::quant`), several times faster; the
    /// answer says which (`precision`).
    pub exact: Option<bool>,
}

/// `POST /api/view`: one layer in the page's compact int8 format (see
/// `json::view_bytes`), so a long text's cells arrive in one response.
pub async fn view(State(state): State<AppState>, JsonBody(req): JsonBody<ViewRequest>) -> Result<Response, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let layer = parse_layers(&state, Some(&[req.layer.unwrap_or(0)]))?[0];
    let kinds = parse_kinds(req.kinds.as_deref(), state.model.arch(), state.model.arch().kinds())?;
    let top_k = parse_top_k(&state, req.top_k, 5)?;
    let t_len = req.text.chars().count() as u128;
    let size = t_len * (kinds.len() * state.model.hidden_size()) as u128 + trace_json_size(t_len as usize, 0, top_k);
    check_answer_size(&state, size, "this view", "ask for fewer kinds or a shorter text")?;
    let precision = if req.exact == Some(true) || !state.model.has_int8() { Precision::Exact } else { Precision::Int8 };
    let (served, cache, queue) = (state.served.clone(), state.traces.clone(), state.queue.clone());
    let bytes = state
        .queue
        .run(move || {
            let threads = trace_threads_now(&queue, t_len as usize);
            let trace = cached_trace_at(&cache, &served, &req.text, precision, threads);
            view_bytes(&served.model, &trace, layer, &kinds, top_k, precision)
        })
        .await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::HeaderName::from_static("x-cellscope-precision"), precision.name()),
    ];
    Ok((headers, bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub feature: Option<String>,
    pub regex: Option<String>,
    pub spans: Option<Vec<(usize, usize)>>,
    pub layers: Option<Vec<usize>>,
    pub kinds: Option<Vec<String>>,
    pub top_k: Option<usize>,
    pub metric: Option<String>,
}

/// Longest regex pattern accepted, and the compiled-size cap, so a request
/// cannot make the server build a huge automaton.
const MAX_REGEX_LEN: usize = 1000;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Builds the labels a rank request asks for: exactly one of feature, regex, spans.
pub fn request_labels(
    text: &str,
    feature: Option<&str>,
    regex: Option<&str>,
    spans: Option<&[(usize, usize)]>,
) -> Result<(String, Labels), AppError> {
    let chars: Vec<char> = text.chars().collect();
    let given = [feature.is_some(), regex.is_some(), spans.is_some()].iter().filter(|&&b| b).count();
    if given != 1 {
        return Err(AppError::invalid(
            "bad_feature",
            format!("give exactly one of feature ({}), regex, or spans", crate::analysis::concept_names(|_| true)),
        ));
    }
    if let Some(f) = feature {
        let concept: Concept = f.parse().map_err(|_| {
            AppError::invalid(
                "bad_feature",
                format!("unknown feature {f:?}; use one of {}", crate::analysis::concept_names(|_| true)),
            )
        })?;
        return Ok((concept.name().to_string(), concept_labels(&chars, concept)));
    }
    if let Some(r) = regex {
        if r.len() > MAX_REGEX_LEN {
            return Err(AppError::invalid("bad_regex", format!("regex is longer than {MAX_REGEX_LEN} bytes")));
        }
        let re = regex::RegexBuilder::new(r)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| AppError::invalid("bad_regex", format!("regex does not compile: {e}")))?;
        return Ok((format!("regex:{r}"), Labels::Binary(regex_mask(&chars, &re))));
    }
    let spans = spans.unwrap_or_default();
    let mask = span_mask(chars.len(), spans).map_err(|e| AppError::invalid("bad_spans", e.to_string()))?;
    Ok(("spans".to_string(), Labels::Binary(mask)))
}

/// `POST /api/cells/rank`
pub async fn rank_cells(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RankRequest>,
) -> Result<Response, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let layers = parse_layers(&state, req.layers.as_deref())?;
    let kinds = parse_kinds(req.kinds.as_deref(), state.model.arch(), state.model.arch().kinds())?;
    let metric: GradedMetric = match req.metric.as_deref() {
        None => GradedMetric::default(),
        Some(m) => m
            .parse()
            .map_err(|_| AppError::invalid("bad_metric", format!("unknown metric {m:?}; use pearson or spearman")))?,
    };
    let top_k = req.top_k.unwrap_or(20);
    let (feature, labels) =
        request_labels(&req.text, req.feature.as_deref(), req.regex.as_deref(), req.spans.as_deref())?;
    let metric_name = crate::analysis::metric_name(&labels, metric);
    let queue = state.queue.clone();
    let cells = with_trace(&state, req.text, move |_, trace| {
        crate::finder::rank_trace_top(trace, &labels, &layers, &kinds, metric, top_k, threads_now(&queue))
    })
    .await?
    .map_err(|e| AppError::invalid("bad_feature", e.to_string()))?;
    Ok(Json(RankAnswer { feature, metric: metric_name, cells }).into_response())
}

/// `POST /api/cells/rank`'s answer.
#[derive(Serialize)]
pub struct RankAnswer {
    /// The concept's name, `regex:PATTERN` or `spans`.
    pub feature: String,
    /// `auc` for yes/no concepts, else `pearson` or `spearman`.
    pub metric: &'static str,
    /// Best first.
    pub cells: Vec<crate::finder::CellScore>,
}
