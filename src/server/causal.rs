//! The causal lab's API: what happens to the model's predictions when a cell is
//! held at a value (`POST /api/intervene`), text generated with cells held
//! (`POST /api/sample`, whole or streamed), and what a top-layer cell writes to
//! the output directly (`GET /api/cell/{layer}/{kind}/{n}`).
//!
//! Clamp semantics live in the model (`model::Clamp`); this module validates
//! requests, runs the model in a queue slot, and shapes the answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::{check_text, parse_top_k};
use super::error::{AppError, JsonBody};
use super::json::{trace_json_size, Guess};
use super::AppState;
use crate::analysis::{c_features, Labels, CONCEPTS};
use crate::model::{Clamp, Kind, Model, Sampling, Trace};

/// Most clamps one request may hold.
pub const MAX_CLAMPS: usize = 64;

/// One clamp as the API takes it; `from`/`to` default to the whole text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClampRequest {
    pub layer: usize,
    pub kind: String,
    pub cell: usize,
    pub value: f64,
    pub from: Option<usize>,
    pub to: Option<usize>,
}

/// A clamp as answered back, with its range resolved.
#[derive(Debug, Clone, Serialize)]
pub struct ClampEcho {
    pub layer: usize,
    pub kind: &'static str,
    pub cell: usize,
    pub value: f32,
    pub from: usize,
    pub to: usize,
}

/// Checks and converts clamps for a text of `len` steps (`to` defaults to `len`).
fn parse_clamps(model: &Model, clamps: &[ClampRequest], len: usize) -> Result<Vec<Clamp>, AppError> {
    if clamps.len() > MAX_CLAMPS {
        return Err(AppError::invalid(
            "too_many_clamps",
            format!("{} clamps given; at most {MAX_CLAMPS} per request", clamps.len()),
        ));
    }
    let out: Vec<Clamp> = clamps
        .iter()
        .map(|c| {
            let kind = Kind::parse(&c.kind)
                .ok_or_else(|| AppError::invalid("bad_kind", format!("clamp kind {:?} is not h or c", c.kind)))?;
            let value = c.value as f32;
            Ok(Clamp { layer: c.layer, kind, cell: c.cell, value, from: c.from.unwrap_or(0), to: c.to.unwrap_or(len) })
        })
        .collect::<Result<_, AppError>>()?;
    model.check_clamps(&out, len).map_err(|e| {
        use crate::model::ClampError as E;
        let code = match e {
            E::Layer { .. } => "bad_layer",
            E::Kind(_) | E::NoCell(_) => "bad_kind",
            E::Cell { .. } => "bad_cell",
            E::Value(_) => "bad_value",
            E::Range { .. } => "bad_range",
        };
        AppError::invalid(code, e.to_string())
    })?;
    Ok(out)
}

fn echo(clamps: &[Clamp]) -> Vec<ClampEcho> {
    clamps
        .iter()
        .map(|c| ClampEcho {
            layer: c.layer,
            kind: c.kind.letter(),
            cell: c.cell,
            value: c.value,
            from: c.from,
            to: c.to,
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterveneRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    pub text: String,
    #[serde(default)]
    pub clamps: Vec<ClampRequest>,
    /// A concept direction held at a score (added to `clamps`).
    pub direction: Option<DirectionClamp>,
    pub top_k: Option<usize>,
}

/// A concept direction (a probe from `/api/probe`) held at a score: its cells are
/// moved along the weights from their means, `v_j = mean_j + std_j · w_j · α` with
/// `α = (score − bias) / Σ w_j²`, so that `bias + Σ w_j (v_j − mean_j) / std_j =
/// score`; each becomes a clamp over `[from, to)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionClamp {
    pub probe: crate::finder::probe::ProbeSpec,
    pub score: f64,
    pub from: Option<usize>,
    pub to: Option<usize>,
}

impl DirectionClamp {
    /// The per-cell clamps that put the direction's score at `score`.
    fn clamps(&self, model: &Model) -> Result<Vec<ClampRequest>, AppError> {
        self.probe.check(model).map_err(|e| AppError::invalid("bad_probe", e.to_string()))?;
        let norm: f64 = self.probe.weights.iter().map(|w| w.weight * w.weight).sum();
        if !(norm > 0.0 && norm.is_finite() && self.score.is_finite()) {
            return Err(AppError::invalid(
                "bad_probe",
                "a direction to clamp needs finite, not all zero weights and a finite score",
            ));
        }
        let alpha = (self.score - self.probe.bias) / norm;
        Ok(self
            .probe
            .weights
            .iter()
            .map(|w| ClampRequest {
                layer: w.layer,
                kind: w.kind.letter().to_string(),
                cell: w.cell,
                value: w.mean + w.std * w.weight * alpha,
                from: self.from,
                to: self.to,
            })
            .collect())
    }
}

/// One side (base or clamped) of an intervention.
#[derive(Serialize)]
pub struct Side {
    /// `logp[t] = ln p(text[t+1] | text[..=t])`, `null` where that character is unknown.
    pub logp: Vec<Option<f32>>,
    /// Mean −logp over the known entries (nats per character).
    pub loss: Option<f64>,
    /// The top-k guesses after every position (when `top_k` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<Vec<Guess>>>,
}

/// A position the clamp changed most.
#[derive(Serialize)]
pub struct Affected {
    pub position: usize,
    /// The character at `position` and the one the model had to predict after it.
    pub char: String,
    pub next: String,
    pub delta: f32,
}

/// The mean change in log-probability on the characters of one concept
/// (positions whose *predicted* character carries it), against all others.
#[derive(Serialize)]
pub struct ConceptDelta {
    pub concept: &'static str,
    pub chars: usize,
    pub mean_delta: Option<f64>,
    pub mean_delta_others: Option<f64>,
}

#[derive(Serialize)]
pub struct InterveneAnswer {
    pub length: usize,
    pub clamps: Vec<ClampEcho>,
    pub base: Side,
    pub clamped: Side,
    /// `clamped.logp[t] − base.logp[t]`.
    pub delta: Vec<Option<f32>>,
    pub loss_base: Option<f64>,
    pub loss_clamped: Option<f64>,
    /// The ten positions with the largest |delta|, largest first.
    pub most_affected: Vec<Affected>,
    /// For each yes/no concept of the C lexer.
    pub concepts: Vec<ConceptDelta>,
}

fn side(model: &Model, trace: &Trace, top_k: usize) -> Side {
    let ids = &trace.ids;
    let logp: Vec<Option<f32>> = (0..trace.len().saturating_sub(1))
        .map(|t| ids[t + 1].map(|id| trace.probs[[t, id as usize]].max(f32::MIN_POSITIVE).ln()))
        .collect();
    let known: Vec<f64> = logp.iter().flatten().map(|&l| -(l as f64)).collect();
    let loss = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
    let top = (top_k > 0).then(|| super::json::predictions(model, trace, top_k).into_iter().map(|p| p.top).collect());
    Side { logp, loss, top }
}

fn mean(xs: impl Iterator<Item = f32>) -> Option<f64> {
    let (mut s, mut n) = (0f64, 0usize);
    for x in xs {
        s += x as f64;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// The answer to an intervention on `base`'s text, the clamped trace run on `threads` threads.
fn intervene_answer(model: &Model, base: &Trace, clamps: &[Clamp], top_k: usize, threads: usize) -> InterveneAnswer {
    // The layers below the lowest clamped one are the unclamped trace's.
    let clamped_trace = model.trace_clamped_over(base, clamps, threads);
    let base = side(model, base, top_k);
    let chars = clamped_trace.chars.clone();
    let clamped = side(model, &clamped_trace, top_k);
    drop(clamped_trace);
    let delta: Vec<Option<f32>> =
        base.logp.iter().zip(&clamped.logp).map(|(b, c)| Some(c.as_ref()? - b.as_ref()?)).collect();
    let mut order: Vec<usize> = (0..delta.len()).filter(|&t| delta[t].is_some()).collect();
    order.sort_by(|&a, &b| delta[b].unwrap().abs().total_cmp(&delta[a].unwrap().abs()).then(a.cmp(&b)));
    let most_affected = order
        .iter()
        .take(10)
        .map(|&t| Affected {
            position: t,
            char: chars[t].to_string(),
            next: chars[t + 1].to_string(),
            delta: delta[t].unwrap(),
        })
        .collect();
    let feats = c_features(&chars);
    let concepts = CONCEPTS
        .iter()
        .filter_map(|&c| match feats.labels(c) {
            Labels::Binary(mask) => {
                // delta[t] is about predicting chars[t + 1].
                let inside = |t: usize| mask[t + 1];
                let yes = delta.iter().enumerate().filter(|(t, d)| d.is_some() && inside(*t)).count();
                Some(ConceptDelta {
                    concept: c.name(),
                    chars: yes,
                    mean_delta: mean(delta.iter().enumerate().filter(|(t, _)| inside(*t)).filter_map(|(_, d)| *d)),
                    mean_delta_others: mean(
                        delta.iter().enumerate().filter(|(t, _)| !inside(*t)).filter_map(|(_, d)| *d),
                    ),
                })
            }
            Labels::Graded(_) => None,
        })
        .collect();
    InterveneAnswer {
        length: chars.len(),
        clamps: echo(clamps),
        loss_base: base.loss,
        loss_clamped: clamped.loss,
        base,
        clamped,
        delta,
        most_affected,
        concepts,
    }
}

/// `POST /api/intervene`
pub async fn intervene(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<InterveneRequest>,
) -> Result<Response, AppError> {
    let state = state.select(req.model.as_deref())?;
    check_text(&state, &req.text)?;
    let len = req.text.chars().count();
    let mut requested = req.clamps;
    if let Some(d) = &req.direction {
        requested.extend(d.clamps(&state.model)?);
    }
    if requested.is_empty() {
        return Err(AppError::invalid(
            "bad_clamps",
            "clamps is empty; give at least one {layer, kind, cell, value}, or a direction",
        ));
    }
    let clamps = parse_clamps(&state.model, &requested, len)?;
    let top_k = parse_top_k(&state, req.top_k, 0)?;
    // Two logp/delta rows of ~12 bytes, and top-k under both.
    let size = trace_json_size(len, 3, 0) + 2 * len as u128 * top_k as u128 * 32;
    super::api::check_answer_size(&state, size, "this answer", "ask for a smaller top_k or a shorter text")?;
    // The unclamped run is usually the trace the page just made: take it from the cache.
    let queue = state.queue.clone();
    let body = super::api::with_trace(&state, req.text, move |model, base| {
        let threads = super::api::trace_threads_now(&queue, base.len());
        serde_json::to_vec(&intervene_answer(model, base, &clamps, top_k, threads))
    })
    .await?
    .map_err(|e| AppError::internal(format!("serialising: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The cell whose value each generated character reports.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    pub layer: usize,
    pub kind: Kind,
    pub cell: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    /// The served model to use (`GET /api/models`); the default when left out.
    pub model: Option<String>,
    #[serde(default)]
    pub prime: String,
    pub length: usize,
    pub temperature: f64,
    pub seed: Option<u64>,
    pub top_k: Option<usize>,
    #[serde(default)]
    pub clamps: Vec<ClampRequest>,
    pub watch: Option<Watch>,
}

#[derive(Deserialize, Default)]
pub struct StreamQuery {
    pub stream: Option<String>,
}

#[derive(Serialize)]
pub struct SampleAnswer {
    /// The generated characters, without the prime.
    pub text: String,
    pub prime: String,
    pub seed: u64,
    pub temperature: f32,
    pub clamps: Vec<ClampEcho>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<Watch>,
    /// The watched cell's value after each generated character.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f32>>,
}

/// One line of a streamed sample.
#[derive(Serialize)]
struct SampleChunk {
    char: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f32>,
}

/// The last line of a streamed sample: the whole answer.
#[derive(Serialize)]
struct SampleDone {
    done: bool,
    answer: SampleAnswer,
}

struct SampleJob {
    prime: String,
    length: usize,
    how: Sampling,
    clamps: Vec<Clamp>,
    watch: Option<Watch>,
}

impl SampleJob {
    /// Runs the sampler on `threads` threads, handing each character (and the
    /// watched value) to `emit`.
    fn run(&self, model: &Model, threads: usize, mut emit: impl FnMut(char, Option<f32>) -> bool) {
        crate::model::sample_on(model, &self.prime, self.length, self.how, &self.clamps, threads, |c, stepper| {
            let value = self.watch.map(|w| stepper.value(w.layer, w.kind, w.cell));
            emit(c, value)
        });
    }
}

/// `POST /api/sample` (`?stream=ndjson` streams one JSON line per character,
/// then a last line `{"done": true, ...}` with the whole answer).
pub async fn sample(
    State(state): State<AppState>,
    Query(q): Query<StreamQuery>,
    JsonBody(req): JsonBody<SampleRequest>,
) -> Result<Response, AppError> {
    let state = state.select(req.model.as_deref())?;
    let stream = match q.stream.as_deref() {
        None => false,
        Some("ndjson") => true,
        Some(other) => {
            return Err(AppError::invalid("bad_format", format!("unknown stream format {other:?}; use ndjson")))
        }
    };
    check_text(&state, &req.prime)?;
    let limit = state.limits.max_text_chars;
    if req.length == 0 || req.length > limit {
        return Err(AppError::invalid(
            "bad_length",
            format!(
                "length {} is out of range: generate 1..={limit} characters (server flag --max-text-chars)",
                req.length
            ),
        ));
    }
    if !req.temperature.is_finite() || req.temperature < 0.0 || req.temperature > 100.0 {
        return Err(AppError::invalid(
            "bad_temperature",
            format!("temperature {} is out of range: use 0 (greedy) to 100", req.temperature),
        ));
    }
    let top_k = parse_top_k(&state, req.top_k, 0)?;
    let model = state.model.clone();
    // Clamps count steps from the prime's first character; by default they hold
    // for the whole run.
    let steps = req.prime.chars().count().max(1) + req.length;
    let clamps = parse_clamps(&model, &req.clamps, steps)?;
    if let Some(w) = req.watch {
        super::api::parse_layers(&state, Some(&[w.layer]))?;
        model.arch().check_kind(w.kind).map_err(|e| AppError::invalid("bad_kind", format!("watch: {e}")))?;
        if w.cell >= model.hidden_size() {
            return Err(AppError::invalid(
                "bad_cell",
                format!("watch cell {} does not exist; layers have cells 0..={}", w.cell, model.hidden_size() - 1),
            ));
        }
    }
    let seed = req.seed.unwrap_or(1);
    let temperature = req.temperature as f32;
    let job = SampleJob {
        prime: req.prime.clone(),
        length: req.length,
        how: Sampling { temperature, top_k, seed },
        clamps,
        watch: req.watch,
    };
    let answer = move |text: String, values: Option<Vec<f32>>, job: &SampleJob| SampleAnswer {
        text,
        prime: job.prime.clone(),
        seed,
        temperature,
        clamps: echo(&job.clamps),
        watch: job.watch,
        values,
    };
    let queue = state.queue.clone();
    if !stream {
        let body = state
            .queue
            .run(move || {
                let mut text = String::new();
                let mut values = job.watch.map(|_| Vec::new());
                job.run(&model, super::api::threads_now(&queue), |c, v| {
                    text.push(c);
                    if let (Some(vs), Some(v)) = (values.as_mut(), v) {
                        vs.push(v);
                    }
                    true
                });
                serde_json::to_vec(&answer(text, values, &job))
            })
            .await?
            .map_err(|e| AppError::internal(format!("serialising: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    // Streamed: wait for a slot now (so a full queue is still a 503), then
    // generate on the blocking pool, one line per character into a small channel.
    // A client that goes away closes the channel and stops the generator.
    let slot = state.queue.slot().await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(slot.run(move || {
        let mut text = String::new();
        let mut values = job.watch.map(|_| Vec::new());
        let mut line = Vec::with_capacity(64);
        job.run(&model, super::api::threads_now(&queue), |c, v| {
            text.push(c);
            if let (Some(vs), Some(v)) = (values.as_mut(), v) {
                vs.push(v);
            }
            line.clear();
            let _ = serde_json::to_writer(&mut line, &SampleChunk { char: c.to_string(), value: v });
            line.push(b'\n');
            tx.blocking_send(Bytes::copy_from_slice(&line)).is_ok()
        });
        let mut last =
            serde_json::to_vec(&SampleDone { done: true, answer: answer(text, values, &job) }).unwrap_or_default();
        last.push(b'\n');
        let _ = tx.blocking_send(Bytes::from(last));
    }));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-store")],
        Body::new(ChannelBody(rx)),
    )
        .into_response())
}

/// A response body fed by a channel (each message one chunk).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// What a top-layer h cell writes to the next-character logits directly: its
/// decoder column (logit_v += W_dec[v, n] · h_t[n], no normalisation between).
#[derive(Serialize)]
pub struct LogitEffect {
    /// Most promoted first.
    pub promotes: Vec<Guess>,
    /// Most suppressed first.
    pub suppresses: Vec<Guess>,
}

/// The decoder column of top-layer h cell `cell`, as the ten most promoted and
/// suppressed characters (`p` holds the weight).
pub fn logit_effect(model: &Model, cell: usize) -> LogitEffect {
    let w = model.weights().decoder_weight.column(cell);
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    let guess = |&i: &usize| Guess { char: model.vocab.chars()[i].to_string(), p: w[i] };
    LogitEffect {
        promotes: order.iter().take(10).map(guess).collect(),
        suppresses: order.iter().rev().take(10).map(guess).collect(),
    }
}

/// `GET /api/cell/{layer}/{kind}/{n}` (`?model=ID`): the cell page's data as JSON.
pub async fn cell(
    super::api::Picked(state): super::api::Picked,
    Path((layer, kind, n)): Path<(String, String, String)>,
) -> Result<Json<super::pages::CellProfile>, AppError> {
    let (layer, kind, cell) = super::pages::parse_cell_path(&state.model, &layer, &kind, &n)
        .map_err(|(code, m)| AppError::new(StatusCode::NOT_FOUND, code, m))?;
    Ok(Json(super::pages::cell_profile(&state, layer, kind, cell).await?))
}
