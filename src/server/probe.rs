//! Concept directions over HTTP: `POST /api/probe` fits a sparse logistic probe on a text's
//! labels (the same `feature | regex | spans` as `/api/cells/rank`) and `POST
//! /api/probe/score` scores a fitted probe on another text. The maths is in
//! `analysis/probe.rs`, the cells in `finder/probe.rs`; this module validates, queues and
//! shapes the answers.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::{check_text, parse_kinds, parse_layers, request_labels, with_trace};
use super::error::{AppError, JsonBody};
use super::AppState;
use crate::analysis::probe::{self as fit, ProbeError, ProbeOptions};
use crate::analysis::Labels;
use crate::finder::probe::{probe_trace, Probe, ProbeSpec, Scored, SpecError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub feature: Option<String>,
    pub regex: Option<String>,
    pub spans: Option<Vec<(usize, usize)>>,
    pub layers: Option<Vec<usize>>,
    pub kinds: Option<Vec<String>>,
    pub l1: Option<f64>,
    pub max_cells: Option<usize>,
}

/// `POST /api/probe`'s answer: the probe, and its score at every character of the text.
#[derive(Serialize)]
pub struct ProbeAnswer {
    pub feature: String,
    pub chars: usize,
    #[serde(flatten)]
    pub probe: Probe,
    /// The probe's score at every character, train and held-out alike.
    pub scores: Vec<f32>,
}

/// Maps a refused fit to its code.
fn probe_error(e: ProbeError) -> AppError {
    let code = match e {
        ProbeError::NoPositives { .. } | ProbeError::NoNegatives { .. } => "bad_feature",
        ProbeError::TooShort { .. } | ProbeError::OneClass { .. } => "too_short",
        ProbeError::BadL1(_) => "bad_l1",
        ProbeError::BadMaxCells { .. } => "bad_max_cells",
        ProbeError::TooManyCells { .. } => "too_many_cells",
        ProbeError::TooLarge { .. } => return AppError::too_large("probe_too_large", e.to_string()),
        ProbeError::LabelLength { .. } | ProbeError::RaggedBlocks(..) => return AppError::internal(e.to_string()),
    };
    AppError::invalid(code, e.to_string())
}

/// Binary labels for a probe: a graded concept is refused.
fn binary(feature: &str, labels: Labels) -> Result<Vec<bool>, AppError> {
    match labels {
        Labels::Binary(b) => Ok(b),
        Labels::Graded(_) => Err(AppError::invalid(
            "bad_feature",
            format!(
                "{feature} is graded (a number per character); a probe separates yes/no concepts: use {}, a regex \
                 or spans",
                crate::analysis::concept_names(|c| !c.is_graded())
            ),
        )),
    }
}

/// `POST /api/probe`
pub async fn probe(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ProbeRequest>,
) -> Result<Json<ProbeAnswer>, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let layers = parse_layers(&state, req.layers.as_deref())?;
    let kinds = parse_kinds(req.kinds.as_deref(), state.model.arch(), state.model.arch().default_kinds())?;
    let options = ProbeOptions { l1: req.l1, max_cells: req.max_cells.unwrap_or(fit::DEFAULT_MAX_CELLS) };
    options.check().map_err(probe_error)?;
    let (feature, labels) =
        request_labels(&req.text, req.feature.as_deref(), req.regex.as_deref(), req.spans.as_deref())?;
    let labels = binary(&feature, labels)?;
    fit::check_size(layers.len() * kinds.len() * state.model.hidden_size(), labels.len()).map_err(probe_error)?;
    fit::check_labels(&labels).map_err(probe_error)?;
    let chars = labels.len();
    let (probe, scores) = with_trace(&state, req.text, move |_, trace| {
        let started = std::time::Instant::now();
        let probe = probe_trace(trace, &labels, &layers, &kinds, options)?;
        tracing::info!(
            chars = trace.len(),
            cells = probe.weights.len(),
            "probe fitted in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let scores = ProbeSpec::from(&probe).scores(trace);
        Ok::<_, ProbeError>((probe, scores))
    })
    .await?
    .map_err(probe_error)?;
    Ok(Json(ProbeAnswer { feature, chars, probe, scores }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    /// `/api/probe`'s answer, or just its weights and bias.
    pub probe: ProbeSpec,
    pub text: String,
    pub feature: Option<String>,
    pub regex: Option<String>,
    pub spans: Option<Vec<(usize, usize)>>,
}

/// `POST /api/probe/score`'s answer.
#[derive(Serialize)]
pub struct ScoreAnswer {
    /// The label the AUCs are against, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    pub chars: usize,
    #[serde(flatten)]
    pub scored: Scored,
}

/// `POST /api/probe/score`
pub async fn score(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ScoreRequest>,
) -> Result<Json<ScoreAnswer>, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    req.probe.check(&state.model).map_err(|e: SpecError| AppError::invalid("bad_probe", e.to_string()))?;
    let labelled = req.feature.is_some() || req.regex.is_some() || req.spans.is_some();
    let (feature, labels) = if labelled {
        let (feature, labels) =
            request_labels(&req.text, req.feature.as_deref(), req.regex.as_deref(), req.spans.as_deref())?;
        let labels = binary(&feature, labels)?;
        match labels.iter().filter(|&&y| y).count() {
            0 => return Err(probe_error(ProbeError::NoPositives { len: labels.len() })),
            p if p == labels.len() => return Err(probe_error(ProbeError::NoNegatives { len: labels.len() })),
            _ => {}
        }
        (Some(feature), Some(labels))
    } else {
        (None, None)
    };
    let spec = req.probe;
    let scored = with_trace(&state, req.text, move |_, trace| {
        Scored::new(spec.scores(trace), spec.best_cell_values(trace), labels.as_deref())
    })
    .await?;
    Ok(Json(ScoreAnswer { feature, chars: scored.scores.len(), scored }))
}
