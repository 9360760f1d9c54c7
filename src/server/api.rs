//! JSON API handlers (DESIGN §5). Each one validates its request completely before
//! doing any work, then runs the model off the async runtime.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{body_rejection, parse_json, AppError};
use super::json::{trace_json, trace_npy, view_bytes};
use super::AppState;
use crate::analysis::{concept_labels, regex_mask, span_mask, Concept, GradedMetric, Labels};
use crate::model::{Kind, Trace};

/// `GET /api/model`
pub async fn model_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.model_info())
}

/// `GET /healthz`
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /api/openapi.json`
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
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

/// Parses kind letters; `None` gives `default`.
pub fn parse_kinds(kinds: Option<&[String]>, default: &[Kind]) -> Result<Vec<Kind>, AppError> {
    let Some(kinds) = kinds else {
        return Ok(default.to_vec());
    };
    if kinds.is_empty() {
        return Err(AppError::invalid("bad_kind", "kinds is empty; give some of h, c, i, f, g, o"));
    }
    let mut out = Vec::new();
    for k in kinds {
        let kind = Kind::parse(k)
            .ok_or_else(|| AppError::invalid("bad_kind", format!("unknown kind {k:?}; use h, c, i, f, g or o")))?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// Checks layer indices; `None` gives all layers.
pub fn parse_layers(state: &AppState, layers: Option<&[usize]>) -> Result<Vec<usize>, AppError> {
    let n = state.model.layers();
    match layers {
        None => Ok((0..n).collect()),
        Some([]) => Err(AppError::invalid("bad_layer", "layers is empty")),
        Some(ls) => {
            for &l in ls {
                if l >= n {
                    return Err(AppError::invalid(
                        "bad_layer",
                        format!("layer {l} does not exist; the model has layers 0..={}", n - 1),
                    ));
                }
            }
            Ok(ls.to_vec())
        }
    }
}

fn parse_cells(state: &AppState, cells: Option<&[usize]>) -> Result<Option<Vec<usize>>, AppError> {
    let h = state.model.hidden_size();
    match cells {
        None => Ok(None),
        Some([]) => Err(AppError::invalid("bad_cell", "cells is empty")),
        Some(cs) => {
            if let Some(&c) = cs.iter().find(|&&c| c >= h) {
                return Err(AppError::invalid(
                    "bad_cell",
                    format!("cell {c} does not exist; layers have cells 0..={}", h - 1),
                ));
            }
            Ok(Some(cs.to_vec()))
        }
    }
}

fn parse_top_k(state: &AppState, top_k: Option<usize>, default: usize) -> Result<usize, AppError> {
    let v = state.model.vocab.len();
    let k = top_k.unwrap_or(default);
    if k > v {
        return Err(AppError::invalid("bad_top_k", format!("top_k {k} exceeds the vocabulary size {v}")));
    }
    Ok(k)
}

/// Traces `text` on the blocking pool, holding one of the limited trace permits.
/// With every permit taken it answers 503 at once instead of queueing.
pub async fn run_trace(state: &AppState, text: String) -> Result<Trace, AppError> {
    let permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "all {} trace slots are busy; retry shortly (server flag --max-concurrent)",
                state.limits.max_concurrent
            ),
        )
    })?;
    let model = state.model.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        model.trace(&text)
    })
    .await
    .map_err(|e| AppError::internal(format!("trace task failed: {e}")))
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|r| body_rejection(r, state.limits.max_body_bytes))?;
    let req: TraceRequest = parse_json(&body)?;
    let npy = wants_npy(&query, &headers)?;
    check_text(&state, &req.text)?;
    let layers = parse_layers(&state, req.layers.as_deref())?;
    let kinds = parse_kinds(req.kinds.as_deref(), &[Kind::Hidden, Kind::Cell])?;
    let cells = parse_cells(&state, req.cells.as_deref())?;
    let top_k = parse_top_k(&state, req.top_k, 5)?;
    let trace = run_trace(&state, req.text).await?;
    if npy {
        let kinds_hdr = kinds.iter().map(|k| k.letter()).collect::<Vec<_>>().join(",");
        let layers_hdr = layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",");
        let bytes = trace_npy(&trace, &layers, &kinds, cells.as_deref());
        return Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"trace.npy\"".to_string()),
                (header::HeaderName::from_static("x-cellscope-layers"), layers_hdr),
                (header::HeaderName::from_static("x-cellscope-kinds"), kinds_hdr),
            ],
            bytes,
        )
            .into_response());
    }
    let json = tokio::task::spawn_blocking(move || {
        trace_json(&state.model, &trace, Some(&layers), &kinds, cells.as_deref(), top_k)
    })
    .await
    .map_err(|e| AppError::internal(format!("serialising failed: {e}")))?;
    Ok(Json(json).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewRequest {
    pub text: String,
    pub layer: Option<usize>,
    pub kinds: Option<Vec<String>>,
    pub top_k: Option<usize>,
}

/// `POST /api/view`: one layer in the page's compact int8 format (see
/// `json::view_bytes`), so a long text's cells arrive in one response.
pub async fn view(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, AppError> {
    let body = body.map_err(|r| body_rejection(r, state.limits.max_body_bytes))?;
    let req: ViewRequest = parse_json(&body)?;
    check_text(&state, &req.text)?;
    let layer = parse_layers(&state, Some(&[req.layer.unwrap_or(0)]))?[0];
    let kinds = parse_kinds(req.kinds.as_deref(), &Kind::ALL)?;
    let top_k = parse_top_k(&state, req.top_k, 5)?;
    let trace = run_trace(&state, req.text).await?;
    let bytes = tokio::task::spawn_blocking(move || view_bytes(&state.model, &trace, layer, &kinds, top_k))
        .await
        .map_err(|e| AppError::internal(format!("encoding failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
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
            "give exactly one of feature (string, comment, if, paren-depth, column, ...), regex, or spans",
        ));
    }
    if let Some(f) = feature {
        let concept: Concept = f.parse().map_err(|_| {
            let names: Vec<&str> = crate::analysis::CONCEPTS.iter().map(|c| c.name()).collect();
            AppError::invalid("bad_feature", format!("unknown feature {f:?}; use one of {}", names.join(", ")))
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|r| body_rejection(r, state.limits.max_body_bytes))?;
    let req: RankRequest = parse_json(&body)?;
    check_text(&state, &req.text)?;
    let layers = parse_layers(&state, req.layers.as_deref())?;
    let kinds = parse_kinds(req.kinds.as_deref(), &Kind::ALL)?;
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
    let trace = run_trace(&state, req.text).await?;
    let ranked =
        tokio::task::spawn_blocking(move || crate::finder::rank_trace(&trace, &labels, &layers, &kinds, metric))
            .await
            .map_err(|e| AppError::internal(format!("ranking failed: {e}")))?
            .map_err(|e| AppError::invalid("bad_feature", e.to_string()))?;
    let cells: Vec<_> = ranked.into_iter().take(top_k).collect();
    Ok(Json(json!({"feature": feature, "metric": metric_name, "cells": cells})).into_response())
}
