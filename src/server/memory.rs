//! How the model remembers, over HTTP: how far back one prediction looks
//! (`POST /api/saliency`), one step of one cell explained with its numbers
//! (`POST /api/explain`), and the model's memory horizon over its reference text
//! (`GET /api/horizon`, computed once). The maths is in `model::saliency` and
//! `model::memory`; this module validates requests and runs them in a queue slot.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::{check_text, with_trace};
use super::error::{AppError, JsonBody};
use super::AppState;
use crate::model::{Horizon, StepExplained};

/// Positions of the reference text the memory horizon is measured at.
pub const HORIZON_POSITIONS: usize = 16;
/// Steps back each of them is followed (the shipped model's gradients fall below
/// 1% of their peak well within this at most positions; see the README).
pub const HORIZON_MAX_BACK: usize = 600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaliencyRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub position: usize,
}

/// `POST /api/saliency`'s answer.
#[derive(Serialize)]
pub struct SaliencyAnswer {
    pub position: usize,
    /// The predicted character, `text[position + 1]`.
    pub target: String,
    pub logp: f32,
    /// The earliest step computed; `grad_norm[s − first]` is for step `s`.
    pub first: usize,
    /// ‖∂ ln p(target) / ∂x_s‖₂ for s = first..=position.
    pub grad_norm: Vec<f32>,
    /// The largest distance `position − s` at which the gradient is still at least
    /// 1% of its largest value.
    pub horizon_1pct: usize,
}

/// Steps back a saliency request follows at most (the gradient is far below 1% of
/// its peak long before, and each step costs four 4H × H products).
pub const MAX_SALIENCY_STEPS: usize = 4000;

/// `POST /api/saliency`: how far back one prediction looks.
pub async fn saliency(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SaliencyRequest>,
) -> Result<Json<SaliencyAnswer>, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let len = req.text.chars().count();
    if req.position + 1 >= len {
        return Err(AppError::invalid(
            "bad_position",
            format!(
                "position {} has no next character to predict; use 0..={} for this text",
                req.position,
                len.saturating_sub(2)
            ),
        ));
    }
    let position = req.position;
    // The whole text's trace, shared through the cache with the other exact views
    // of it (clicking one character after another traces it once); the steps after
    // `position` do not enter the gradient.
    let queue = state.queue.clone();
    let s = with_trace(&state, req.text, move |model, trace| {
        let threads = super::api::threads_now(&queue);
        crate::model::saliencies(model, trace, &[position], MAX_SALIENCY_STEPS, threads).pop().flatten()
    })
    .await?
    .ok_or_else(|| {
        AppError::invalid("bad_position", format!("the character after position {position} is outside the vocabulary"))
    })?;
    let horizon_1pct = crate::model::horizon_1pct(&s);
    Ok(Json(SaliencyAnswer {
        position: s.position,
        target: s.target.map(|c| c.to_string()).unwrap_or_default(),
        logp: s.logp,
        first: s.first,
        grad_norm: s.grad_norm,
        horizon_1pct,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    pub position: usize,
    pub layer: usize,
    pub cell: usize,
}

/// `POST /api/explain`: the LSTM equations of one step of one cell, with this
/// text's numbers (`model::explain_step`).
pub async fn explain(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ExplainRequest>,
) -> Result<Json<StepExplained>, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let len = req.text.chars().count();
    if req.position >= len {
        return Err(AppError::invalid(
            "bad_position",
            format!("position {} is past the text's end; use 0..={}", req.position, len.saturating_sub(1)),
        ));
    }
    if !state.model.arch().has_cell() {
        return Err(AppError::invalid(
            "bad_kind",
            format!(
                "explain writes out an LSTM's step; this is a {} model (no cell state c)",
                state.model.arch().name()
            ),
        ));
    }
    super::api::parse_layers(&state, Some(&[req.layer]))?;
    super::api::parse_cells(&state, Some(&[req.cell]))?;
    let (layer, cell, position) = (req.layer, req.cell, req.position);
    let answer =
        with_trace(&state, req.text, move |_, trace| crate::model::explain_step(trace, layer, cell, position)).await?;
    answer.map(Json).ok_or_else(|| AppError::internal("explain_step refused checked indices"))
}

/// `GET /api/horizon`'s answer.
#[derive(Serialize)]
pub struct HorizonAnswer {
    /// Where the positions are: the reference text's name.
    pub text: String,
    /// The result in words, as the model card shows it.
    pub summary: String,
    #[serde(flatten)]
    pub horizon: Horizon,
}

/// `GET /api/horizon`: the memory horizon over the reference text, computed on
/// the first call (in a queue slot) and kept; `?model=ID` for another served model.
pub async fn horizon(super::api::Picked(state): super::api::Picked) -> Result<Json<HorizonAnswer>, AppError> {
    let h = reference_horizon(&state).await?;
    Ok(Json(HorizonAnswer {
        text: state.reference_name.to_string(),
        summary: super::pages::horizon_words(&h),
        horizon: h,
    }))
}

/// The reference text's memory horizon, computed once.
pub async fn reference_horizon(state: &AppState) -> Result<Horizon, AppError> {
    let st = state.clone();
    state
        .horizon
        .get_or_try_init(|| async move {
            let model = st.model.clone();
            let text = st.reference.clone();
            let threads = super::api::threads_now(&st.queue);
            st.queue
                .run(move || crate::model::memory_horizon(&model, &text, HORIZON_POSITIONS, HORIZON_MAX_BACK, threads))
                .await?
                .ok_or_else(|| AppError::internal("the reference text is too short for a memory horizon"))
        })
        .await
        .cloned()
}
