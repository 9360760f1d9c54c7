//! Several models side by side: one text through every served model (or those
//! named); for a concept, each model's best cells; and how far back each model's
//! predictions look — the gradient of a prediction against distance, median over
//! positions of the text ([`crate::model::memory_horizon_of`]), which falls off
//! fastest for the plain RNN. `POST /api/compare` answers JSON; `/compare` is the
//! page (a table, the text coloured by each model's best cell, and the curves on
//! one plot, drawn by `templates/compare.html`).

use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};

use super::api::{cached_trace, check_text, model_summaries, request_labels, ModelSummary};
use super::error::{AppError, JsonBody};
use super::pages::{colored_text_html, html_error, Chrome, SAMPLES};
use super::{AppState, Served};
use crate::analysis::{Concept, GradedMetric, Labels, CONCEPTS};
use crate::finder::CellScore;
use crate::model::Horizon;

/// Positions of the text each model's gradient curve is the median over, by default and at most.
pub const DEFAULT_POSITIONS: usize = 8;
pub const MAX_POSITIONS: usize = 32;
/// Steps back each gradient is followed, by default and at most.
pub const DEFAULT_MAX_BACK: usize = 200;
pub const MAX_MAX_BACK: usize = super::memory::HORIZON_MAX_BACK;
/// Best cells listed per model, by default and at most.
pub const DEFAULT_TOP_K: usize = 3;
pub const MAX_TOP_K: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    pub text: String,
    pub feature: Option<String>,
    pub regex: Option<String>,
    pub spans: Option<Vec<(usize, usize)>>,
    /// Model ids to compare (`GET /api/models`); every served model when left out.
    pub models: Option<Vec<String>>,
    /// Positions the gradient curves are measured at (1..=32, default 8).
    pub positions: Option<usize>,
    /// Steps back each gradient is followed (1..=600, default 200).
    pub max_back: Option<usize>,
    /// Best cells per model (1..=50, default 3).
    pub top_k: Option<usize>,
}

/// `POST /api/compare`'s answer.
#[derive(Serialize)]
pub struct CompareAnswer {
    /// The concept's name, `regex:PATTERN` or `spans`.
    pub feature: String,
    /// `auc` for yes/no concepts, else `pearson`.
    pub metric: &'static str,
    /// One entry per model, in the order asked (served order by default).
    pub models: Vec<ModelComparison>,
}

/// One model's side of a comparison.
#[derive(Serialize)]
pub struct ModelComparison {
    #[serde(flatten)]
    pub model: ModelSummary,
    /// Its best cells for the concept over all its layers and kinds, best first.
    pub best: Vec<CellScore>,
    /// How far back its predictions look on this text; `null` when the text is
    /// too short to predict anything.
    pub horizon: Option<Horizon>,
    /// The best cell's colour value u ∈ [−1, 1] per character (for the page).
    #[serde(skip)]
    pub best_column: Option<Vec<f32>>,
}

/// A checked comparison request.
struct Plan {
    text: Arc<String>,
    feature: String,
    labels: Arc<Labels>,
    models: Vec<Arc<Served>>,
    positions: usize,
    max_back: usize,
    top_k: usize,
}

fn in_range(name: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, AppError> {
    let v = v.unwrap_or(default);
    if !(1..=max).contains(&v) {
        return Err(AppError::invalid("bad_request", format!("{name} {v} is out of range: use 1..={max}")));
    }
    Ok(v)
}

fn plan(state: &AppState, req: CompareRequest) -> Result<Plan, AppError> {
    check_text(state, &req.text)?;
    let models = match &req.models {
        None => state.models.to_vec(),
        Some(ids) if ids.is_empty() => {
            return Err(AppError::invalid(
                "unknown_model",
                format!("models is empty; list some of {} or leave it out for all", state.model_ids().join(", ")),
            ))
        }
        Some(ids) => {
            let mut out: Vec<Arc<Served>> = Vec::new();
            for id in ids {
                let s = state.select(Some(id))?.served;
                if !out.iter().any(|o| Arc::ptr_eq(o, &s)) {
                    out.push(s);
                }
            }
            out
        }
    };
    let (feature, labels) =
        request_labels(&req.text, req.feature.as_deref(), req.regex.as_deref(), req.spans.as_deref())?;
    Ok(Plan {
        feature,
        labels: Arc::new(labels),
        models,
        positions: in_range("positions", req.positions, DEFAULT_POSITIONS, MAX_POSITIONS)?,
        max_back: in_range("max_back", req.max_back, DEFAULT_MAX_BACK, MAX_MAX_BACK)?,
        top_k: in_range("top_k", req.top_k, DEFAULT_TOP_K, MAX_TOP_K)?,
        text: Arc::new(req.text),
    })
}

/// Runs the plan: each model in its own queue slot (so two slots compare two
/// models at once), answers in the plan's order.
async fn run(state: &AppState, plan: Plan) -> Result<CompareAnswer, AppError> {
    let summaries = model_summaries(state);
    let metric = crate::analysis::metric_name(&plan.labels, GradedMetric::default());
    let mut jobs = tokio::task::JoinSet::new();
    // Several models take a slot each and run side by side; one alone may use both cores.
    let threads = if plan.models.len() == 1 { super::api::threads_now(&state.queue) } else { 1 };
    for (i, served) in plan.models.iter().enumerate() {
        let (queue, cache, served) = (state.queue.clone(), state.traces.clone(), served.clone());
        let (text, labels) = (plan.text.clone(), plan.labels.clone());
        let (positions, max_back, top_k) = (plan.positions, plan.max_back, plan.top_k);
        jobs.spawn(async move {
            let answer = queue
                .run(move || {
                    let model = &served.model;
                    let trace = cached_trace(&cache, &served, &text, threads);
                    let layers: Vec<usize> = (0..model.layers()).collect();
                    let ranked = crate::finder::rank_trace_top(
                        &trace,
                        &labels,
                        &layers,
                        model.arch().kinds(),
                        GradedMetric::default(),
                        top_k,
                        threads,
                    );
                    let horizon = crate::model::memory_horizon_of(model, &trace, positions, max_back, threads);
                    ranked.map(|best| {
                        let best_column = best.first().map(|b| {
                            trace.layers[b.layer]
                                .get(b.kind)
                                .column(b.cell)
                                .iter()
                                .map(|&v| crate::display::unit_value(b.kind, v))
                                .collect()
                        });
                        (served.id.clone(), best, horizon, best_column)
                    })
                })
                .await;
            (i, answer)
        });
    }
    let mut done: Vec<Option<ModelComparison>> = (0..plan.models.len()).map(|_| None).collect();
    while let Some(joined) = jobs.join_next().await {
        let (i, answer) = joined.map_err(|e| AppError::internal(format!("comparison task failed: {e}")))?;
        let (id, best, horizon, best_column) = answer?.map_err(|e| AppError::invalid("bad_feature", e.to_string()))?;
        let model = summaries.iter().find(|s| s.id == id).cloned().expect("a served model");
        done[i] = Some(ModelComparison { model, best, horizon, best_column });
    }
    Ok(CompareAnswer { feature: plan.feature, metric, models: done.into_iter().flatten().collect() })
}

/// `POST /api/compare`
pub async fn compare(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CompareRequest>,
) -> Result<Response, AppError> {
    let plan = plan(&state, req)?;
    Ok(Json(run(&state, plan).await?).into_response())
}

// ---------------------------------------------------------------------------
// The page.

/// `/compare`'s query string or form.
#[derive(Deserialize, Default)]
pub struct CompareQuery {
    pub sample: Option<String>,
    pub feature: Option<String>,
    pub text: Option<String>,
}

/// Characters of the text shown coloured per model (the table and plot use all).
const SHOWN_CHARS: usize = 1500;
/// Line colours, one per model (distinct for common colour blindness).
const COLORS: &[&str] = &["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

struct Row {
    id: String,
    label: String,
    color: &'static str,
    params: String,
    test_loss: String,
    /// (link, "layer 1 · c · cell 5", score) per best cell.
    best: Vec<(String, String, String)>,
    horizon: String,
    colored: String,
}

/// One polyline of the plot, in SVG coordinates.
struct Line {
    color: &'static str,
    points: String,
    label: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    chrome: Chrome,
    text: String,
    samples: Vec<(&'static str, &'static str)>,
    concepts: Vec<(&'static str, &'static str, bool)>,
    feature: String,
    metric: &'static str,
    rows: Vec<Row>,
    error: Option<String>,
    shown_chars: usize,
    total_chars: usize,
    // The plot.
    width: f64,
    height: f64,
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
    lines: Vec<Line>,
    /// (y, label) of the log-scale ticks.
    y_ticks: Vec<(f64, String)>,
    /// (x, label) of the distance ticks.
    x_ticks: Vec<(f64, String)>,
    /// y of the 1% line.
    one_percent_y: f64,
    max_back: usize,
    positions: usize,
}

/// The plot's log scale: 10⁰ at the top down to 10^−LOG_FLOOR.
const LOG_FLOOR: f64 = 6.0;

async fn render(state: AppState, q: CompareQuery) -> Response {
    let sample = q.sample.as_deref().and_then(|id| SAMPLES.iter().find(|s| s.id == id)).unwrap_or(&SAMPLES[0]);
    let text =
        q.text.as_deref().map_or_else(|| sample.text.to_string(), |t| t.replace("\r\n", "\n").replace('\r', "\n"));
    let feature = q.feature.clone().unwrap_or_else(|| Concept::String.name().to_string());
    let req = CompareRequest {
        text: text.clone(),
        feature: Some(feature.clone()),
        regex: None,
        spans: None,
        models: None,
        positions: None,
        max_back: None,
        top_k: None,
    };
    let (answer, error, status) = match plan(&state, req) {
        Ok(plan) => match run(&state, plan).await {
            Ok(a) => (Some(a), None, StatusCode::OK),
            Err(e) => (None, Some(e.message), e.status),
        },
        Err(e) => (None, Some(e.message), e.status),
    };
    let chars: Vec<char> = text.chars().collect();
    let shown = &chars[..chars.len().min(SHOWN_CHARS)];
    let (width, height, left, top, plot_w, plot_h) = (640.0, 300.0, 56.0, 12.0, 560.0, 240.0);
    let max_back = DEFAULT_MAX_BACK;
    let x_of = |d: f64| left + plot_w * d / max_back as f64;
    let y_of = |v: f64| {
        let l = if v > 0.0 { v.log10().clamp(-LOG_FLOOR, 0.0) } else { -LOG_FLOOR };
        top + plot_h * (-l) / LOG_FLOOR
    };
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    let metric = answer.as_ref().map_or("auc", |a| a.metric);
    for (i, m) in answer.as_ref().map(|a| a.models.as_slice()).unwrap_or_default().iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mq = if i == 0 && m.model.default { String::new() } else { format!("?model={}", m.model.id) };
        let best = m
            .best
            .iter()
            .map(|b| {
                (
                    format!("/cell/{}/{}/{}{mq}", b.layer, b.kind.letter(), b.cell),
                    format!("layer {} · {} · cell {}", b.layer, b.kind.letter(), b.cell),
                    format!("{:.3} ({})", b.score, if b.sign > 0 { "+" } else { "−" }),
                )
            })
            .collect();
        let none = std::collections::HashSet::new();
        let colored =
            m.best_column.as_ref().map(|col| colored_text_html(shown, |t| col[t], &none, 0)).unwrap_or_default();
        let horizon = m.horizon.as_ref().map_or("—".into(), |h| {
            format!("{:.0} (quartiles {:.0}–{:.0})", h.median, h.quartiles[0], h.quartiles[1])
        });
        if let Some(h) = &m.horizon {
            let mut points = String::new();
            for (d, &v) in h.profile.iter().enumerate() {
                let _ = write!(points, "{:.1},{:.1} ", x_of(d as f64), y_of(f64::from(v)));
            }
            lines.push(Line { color, points, label: format!("{} (median 1% horizon {:.0})", m.model.id, h.median) });
        }
        rows.push(Row {
            id: m.model.id.clone(),
            label: format!("{} × {} {}", m.model.layers, m.model.hidden_size, m.model.arch.to_uppercase()),
            color,
            params: super::pages::thousands(m.model.params as u64),
            test_loss: m.model.test_loss.map_or("—".into(), |v| format!("{v:.3}")),
            best,
            horizon,
            colored,
        });
    }
    let y_ticks = (0..=LOG_FLOOR as i32)
        .map(|k| (y_of(10f64.powi(-k)), if k == 0 { "1".to_string() } else { format!("1e-{k}") }))
        .collect();
    let x_ticks = (0..=4).map(|k| (x_of((max_back * k / 4) as f64), (max_back * k / 4).to_string())).collect();
    let page = ComparePage {
        chrome: Chrome::new(&state, "/compare"),
        text,
        samples: SAMPLES.iter().map(|s| (s.id, s.title)).collect(),
        concepts: CONCEPTS.iter().map(|c| (c.name(), c.description(), c.name() == feature)).collect(),
        feature,
        metric,
        rows,
        error,
        shown_chars: shown.len(),
        total_chars: chars.len(),
        width,
        height,
        left,
        top,
        plot_w,
        plot_h,
        lines,
        y_ticks,
        x_ticks,
        one_percent_y: y_of(0.01),
        max_back,
        positions: DEFAULT_POSITIONS,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => AppError::internal(format!("rendering the compare page: {e}")).into_response(),
    }
}

/// `GET /compare` (`?sample=prose&feature=comment`)
pub async fn page(State(state): State<AppState>, q: Result<Query<CompareQuery>, QueryRejection>) -> Response {
    match q {
        Ok(Query(q)) => render(state, q).await,
        Err(e) => html_error(StatusCode::BAD_REQUEST, "Bad query string", &e.body_text()),
    }
}

/// `POST /compare`: the form with pasted text.
pub async fn page_post(State(state): State<AppState>, form: Result<Form<CompareQuery>, FormRejection>) -> Response {
    match form {
        Ok(Form(q)) => render(state, q).await,
        Err(e) => super::pages::form_error(&e),
    }
}
