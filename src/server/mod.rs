//! The web app and JSON API: one router ([`router`]) lists every route; handlers
//! live in `api.rs` (JSON), `pages.rs` (askama pages), `causal.rs`, `memory.rs`,
//! `probe.rs` and `compare.rs`; `error.rs` holds the error policy; `json.rs` the
//! wire formats; `plots.rs` the pages' SVG plots. A server holds one or several
//! models ([`Served`]); a request picks one with `model` (JSON) or `?model=`
//! (URL) through [`AppState::select`]. Every request passes `guard.rs` (host
//! allow-list, JSON only, body size and deadline, security headers); every model
//! run waits its turn in `queue.rs`; `net.rs` is the accept loop (timeouts,
//! connection cap, graceful shutdown). Handlers know nothing of gate equations:
//! they call [`crate::model::Model::trace`] and the analysis functions.

pub mod api;
pub mod cache;
pub mod causal;
pub mod compare;
pub mod error;
pub mod guard;
pub mod json;
pub mod memory;
pub mod net;
pub mod pages;
pub mod plots;
pub mod probe;
pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::OnceCell;

pub use json::trace_json;

use crate::model::{Model, Trace};
use guard::Guard;
pub use net::NetLimits;
use queue::WorkQueue;

/// Request limits, all configurable by `serve` flags.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_text_chars: usize,
    /// Model runs (trace + answer) at once.
    pub max_concurrent: usize,
    /// Requests waiting for a model slot; more get 503 with Retry-After.
    pub max_queue: usize,
    /// Largest answer, estimated before any work.
    pub max_response_bytes: usize,
    /// Seconds a request body may take to arrive.
    pub body_timeout_secs: u64,
    /// Bytes of recent traces kept for reuse.
    pub trace_cache_bytes: usize,
    /// Bytes of free trace buffers kept for the next traces to record into
    /// (`model::set_pool_limit`); set when the server starts.
    pub buffer_pool_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_text_chars: 20_000,
            max_concurrent: 2,
            max_queue: 64,
            max_response_bytes: 64 << 20,
            body_timeout_secs: 10,
            trace_cache_bytes: 256 << 20,
            buffer_pool_bytes: crate::model::DEFAULT_POOL_BYTES,
        }
    }
}

impl Limits {
    /// Refuses settings that would make the server useless or unsafe, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let checks: [(&str, usize, usize, usize); 5] = [
            ("--max-body-bytes", self.max_body_bytes, 64, 1 << 30),
            ("--max-text-chars", self.max_text_chars, 1, 10_000_000),
            ("--max-concurrent", self.max_concurrent, 1, 256),
            ("--max-response-bytes", self.max_response_bytes, 1024, 1 << 34),
            ("--body-timeout", self.body_timeout_secs as usize, 1, 3600),
        ];
        for (flag, v, lo, hi) in checks {
            if !(lo..=hi).contains(&v) {
                bail!("{flag} {v} is out of range: use {lo}..={hi}");
            }
        }
        if self.max_queue > 100_000 {
            bail!("--max-queue {} is out of range: use 0..=100000", self.max_queue);
        }
        Ok(())
    }
}

/// One served model and what is computed once for it.
pub struct Served {
    /// The name requests pick it by (`model` in a JSON body, `?model=` in a URL):
    /// the model file's stem, e.g. `linux-lstm`.
    pub id: String,
    pub model: Arc<Model>,
    /// The text cell pages show contexts from (shipped beside the model).
    pub reference: Arc<String>,
    /// Where the reference text came from, for the page.
    pub reference_name: Arc<String>,
    /// The reference text's trace, computed on first use.
    pub reference_trace: OnceCell<Arc<pages::ReferenceTrace>>,
    /// The built-in samples' traces, computed on first use, so the home page never
    /// waits in the queue behind API work.
    pub sample_traces: Vec<OnceCell<Arc<Trace>>>,
    /// Per built-in sample, the cell the home page opens on (the finder's best
    /// string or if cell on it), chosen on first use.
    pub first_views: Vec<OnceCell<Option<pages::FirstView>>>,
    /// The memory horizon over the reference text, computed on first use.
    pub horizon: OnceCell<crate::model::Horizon>,
}

impl Served {
    pub fn new(id: String, model: Model, reference: String, reference_name: String) -> Self {
        Self {
            id,
            model: Arc::new(model),
            reference: Arc::new(reference),
            reference_name: Arc::new(reference_name),
            reference_trace: OnceCell::new(),
            sample_traces: pages::SAMPLES.iter().map(|_| OnceCell::new()).collect(),
            first_views: pages::SAMPLES.iter().map(|_| OnceCell::new()).collect(),
            horizon: OnceCell::new(),
        }
    }
}

/// Shared, read-only server state: every served model, and the one a request
/// picked ([`AppState::select`]). It dereferences to the picked [`Served`], so a
/// handler reads `state.model`, `state.reference`, ... of the model it was asked about.
#[derive(Clone)]
pub struct AppState {
    /// The model this request is about (the first served one unless it asked).
    pub served: Arc<Served>,
    /// Every served model, the default first.
    pub models: Arc<Vec<Arc<Served>>>,
    pub limits: Limits,
    /// Model slots and the line in front of them (shared by all models).
    pub queue: Arc<WorkQueue>,
    /// Recent traces, by model and text.
    pub traces: Arc<cache::TraceCache>,
    /// Host names accepted besides IP literals and localhost (`--allow-host`).
    pub allowed_hosts: Arc<Vec<String>>,
    /// Origins allowed to call the API from other sites (`--cors-origin`); none by default.
    pub cors_origins: Arc<Vec<String>>,
}

impl std::ops::Deref for AppState {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl AppState {
    /// One model, as `cellscope serve --model PATH` serves it; its id is its name.
    pub fn new(model: Model, limits: Limits, reference: String, reference_name: String) -> Self {
        let id = model.name.clone();
        Self::with_models(vec![Served::new(id, model, reference, reference_name)], limits)
    }

    /// Several models; the first is the default. Ids must be distinct (the
    /// command line makes them so).
    ///
    /// # Panics
    /// When `models` is empty.
    pub fn with_models(models: Vec<Served>, limits: Limits) -> Self {
        let models: Vec<Arc<Served>> = models.into_iter().map(Arc::new).collect();
        Self {
            served: models.first().expect("at least one model").clone(),
            models: Arc::new(models),
            queue: Arc::new(WorkQueue::new(limits.max_concurrent, limits.max_queue)),
            traces: Arc::new(cache::TraceCache::new(limits.trace_cache_bytes)),
            limits,
            allowed_hosts: Arc::new(Vec::new()),
            cors_origins: Arc::new(Vec::new()),
        }
    }

    /// The state for the model a request names (`None`: the default), or
    /// `unknown_model` listing the served ones.
    pub fn select(&self, id: Option<&str>) -> Result<AppState, error::AppError> {
        let Some(id) = id else {
            return Ok(AppState { served: self.models[0].clone(), ..self.clone() });
        };
        match self.models.iter().find(|m| m.id == id) {
            Some(m) => Ok(AppState { served: m.clone(), ..self.clone() }),
            None => Err(error::AppError::invalid(
                "unknown_model",
                format!("no model {id:?} is served here; use one of {}", self.model_ids().join(", ")),
            )),
        }
    }

    /// The served models' ids, the default first.
    pub fn model_ids(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.id.as_str()).collect()
    }

    /// Whether the picked model is the default (pages then leave `?model=` out of links).
    pub fn is_default(&self) -> bool {
        Arc::ptr_eq(&self.served, &self.models[0])
    }

    /// `GET /api/model`'s body.
    pub fn model_info(&self) -> api::ModelInfo<'_> {
        let m = &self.model;
        let l = &self.limits;
        api::ModelInfo {
            id: &self.id,
            name: &m.name,
            arch: m.arch().name(),
            layers: m.layers(),
            hidden_size: m.hidden_size(),
            vocab: m.vocab.chars().iter().map(|c| c.to_string()).collect(),
            params: m.weights().param_count(),
            train: &m.train,
            limits: api::LimitsInfo {
                max_body_bytes: l.max_body_bytes,
                max_text_chars: l.max_text_chars,
                max_concurrent: l.max_concurrent,
                max_queue: l.max_queue,
                max_response_bytes: l.max_response_bytes,
            },
        }
    }
}

/// The page's script and style, compiled into the binary so an installed or
/// moved `cellscope` serves a complete page.
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

fn asset(content_type: &'static str, body: &'static str) -> axum::response::Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Every route of the app, in one place, behind the request guard (`guard.rs`).
pub fn router(state: AppState) -> Router {
    let guard = Arc::new(Guard {
        allowed_hosts: state.allowed_hosts.to_vec(),
        max_body_bytes: state.limits.max_body_bytes,
        body_timeout: Duration::from_secs(state.limits.body_timeout_secs),
    });
    let cors = cors_layer(&state.cors_origins);
    let body_limit = state.limits.max_body_bytes;
    let app = Router::new()
        .route("/", get(pages::index).post(pages::index_post))
        .route("/cell/{layer}/{kind}/{n}", get(pages::cell))
        .route("/model", get(pages::model_card))
        .route("/compare", get(compare::page).post(compare::page_post))
        .route("/healthz", get(api::healthz))
        .route("/api/model", get(api::model_info))
        .route("/api/models", get(api::models))
        .route("/api/trace", post(api::trace))
        .route("/api/view", post(api::view))
        .route("/api/cells/rank", post(api::rank_cells))
        .route("/api/probe", post(probe::probe))
        .route("/api/probe/score", post(probe::score))
        .route("/api/compare", post(compare::compare))
        .route("/api/intervene", post(causal::intervene))
        .route("/api/sample", post(causal::sample))
        .route("/api/saliency", post(memory::saliency))
        .route("/api/explain", post(memory::explain))
        .route("/api/horizon", get(memory::horizon))
        .route("/api/cell/{layer}/{kind}/{n}", get(causal::cell))
        .route("/api/openapi.json", get(api::openapi))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/static/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        // 5xx are logged once, by AppError; the trace layer only records requests.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()))
        .with_state(state);
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// CORS for the named origins only; `None` (no CORS headers at all) by default.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([
                header::HeaderName::from_static("x-cellscope-layers"),
                header::HeaderName::from_static("x-cellscope-kinds"),
            ]),
    )
}

/// The reference text for a model: the flag's file, else `<model stem>.reference.txt`
/// beside the model; `None` when neither is given or there.
pub fn load_reference(
    model_path: &std::path::Path,
    flag: Option<&std::path::Path>,
) -> anyhow::Result<Option<(String, String)>> {
    if let Some(p) = flag {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading --reference {}", p.display()))?;
        return Ok(Some((text, p.display().to_string())));
    }
    let beside = model_path.with_extension("reference.txt");
    Ok(std::fs::read_to_string(&beside)
        .ok()
        .map(|text| (text, beside.file_name().map_or(String::new(), |s| s.to_string_lossy().into_owned()))))
}

/// What `cellscope serve` runs: the models, limits and network settings its
/// flags (`cli.rs`) decided.
pub struct ServeConfig {
    /// The models, the default first (see [`load_models`]).
    pub models: Vec<Served>,
    pub limits: Limits,
    pub net: NetLimits,
    /// HOST:PORT to listen on.
    pub addr: String,
    /// Host names accepted besides IP literals, localhost and the bound host.
    pub allow_hosts: Vec<String>,
    pub cors_origins: Vec<String>,
}

/// The model files `serve` loads when none are named: every `*.safetensors`
/// in the default model's folder (training checkpoints left out), the default
/// model first, the rest by name.
pub fn default_model_files() -> anyhow::Result<Vec<PathBuf>> {
    let default = crate::model::default_model_path();
    let dir = default.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let mut others: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing the models folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".safetensors") && !name.ends_with(".ckpt.safetensors") && *p != default
        })
        .collect();
    others.sort();
    let mut files = vec![default];
    files.extend(others);
    Ok(files)
}

/// Loads each model file with its reference text: `reference` when given, else
/// `<stem>.reference.txt` beside the model, else the first model's reference
/// when this model's vocabulary covers it, else the built-in C sample. Each
/// model's id is its file stem, made unique with `-2`, `-3`, ... when two
/// files share a stem.
pub fn load_models(paths: &[PathBuf], reference: Option<&std::path::Path>) -> anyhow::Result<Vec<Served>> {
    let mut served: Vec<Served> = Vec::new();
    for path in paths {
        let model = Model::load(path).with_context(|| format!("loading {}", path.display()))?;
        let (text, name) = match (load_reference(path, reference)?, served.first()) {
            (Some(found), _) => found,
            (None, Some(first)) if model.vocab.encode(&first.reference).unknown.is_empty() => {
                (first.reference.to_string(), first.reference_name.to_string())
            }
            (None, _) => (pages::SAMPLES[0].text.to_string(), "built-in C sample".into()),
        };
        let stem = path
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().trim_end_matches(".safetensors").to_string());
        let mut id = stem.clone();
        let mut k = 2;
        while served.iter().any(|s| s.id == id) {
            id = format!("{stem}-{k}");
            k += 1;
        }
        served.push(Served::new(id, model, text, name));
    }
    if served.is_empty() {
        bail!("no model to serve; name one with --model PATH");
    }
    Ok(served)
}

/// Builds every served model's int8 weights (what the first page view would
/// otherwise wait for), then computes the default model's reference trace (what every cell page reads: 3–4 s
/// at 2 × 512, 82 MB kept) in the background once the server listens, so that the
/// first cell page answers at once. A request that comes first waits for the same
/// computation instead of starting a second one. The other models' are made on
/// first use, so that a server of several models does not hold them all from the start.
async fn warm_reference_trace(state: AppState) {
    // The page view's int8 weights first, for every model: milliseconds each.
    let models = state.models.clone();
    let _ = tokio::task::spawn_blocking(move || models.iter().for_each(|s| s.model.prepare_int8())).await;
    let Ok(picked) = state.select(None) else { return };
    let started = std::time::Instant::now();
    match pages::reference_trace(&picked).await {
        Ok(_) => {
            tracing::info!("model {}: reference trace ready ({:.1} s)", picked.id, started.elapsed().as_secs_f64())
        }
        Err(e) => tracing::warn!("model {}: reference trace failed: {e:?}", picked.id),
    }
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn serve_blocking(config: ServeConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cellscope=info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let ServeConfig { models, limits, net, addr, allow_hosts, cors_origins } = config;
    limits.validate()?;
    crate::model::set_pool_limit(limits.buffer_pool_bytes);
    let mut state = AppState::with_models(models, limits);
    let (bind_host, _) = addr
        .rsplit_once(':')
        .with_context(|| format!("--addr {addr:?} is not HOST:PORT (e.g. 127.0.0.1:3000 or localhost:3001)"))?;
    let mut hosts: Vec<String> = allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.push(bind_host.trim_matches(['[', ']']).to_ascii_lowercase());
    state.allowed_hosts = Arc::new(hosts);
    state.cors_origins = Arc::new(cors_origins);
    return_memory_to_the_system();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&addr)
            .await
            .with_context(|| format!("--addr {addr:?}: cannot resolve it (use HOST:PORT, e.g. 127.0.0.1:3000)"))?
            .collect();
        // A name may resolve to several addresses (localhost: ::1 and 127.0.0.1);
        // take the first that binds.
        let mut listener = None;
        let mut last_error = None;
        for addr in &addrs {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last_error = Some(anyhow::Error::new(e).context(format!("binding {addr}"))),
            }
        }
        let listener = match (listener, last_error) {
            (Some(l), _) => l,
            (None, Some(e)) => return Err(e),
            (None, None) => anyhow::bail!("--addr {addr:?} resolves to no address"),
        };
        for m in state.models.iter() {
            tracing::info!(
                "model {}: {} ({} × {} {})",
                m.id,
                m.model.name,
                m.model.layers(),
                m.model.hidden_size(),
                m.model.arch().name()
            );
        }
        tracing::info!("serving {} model(s) on http://{}", state.models.len(), listener.local_addr()?);
        tokio::spawn(warm_reference_trace(state.clone()));
        net::serve(listener, router(state), net, shutdown_signal()).await?;
        tracing::info!("shut down cleanly");
        anyhow::Ok(())
    });
    // A trace still running on the blocking pool is abandoned, not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Large buffers (traces, answers) go straight to mmap and back to the system
/// when freed, instead of growing glibc's heap for good: without this, one
/// 20,000-character request left the server 2.7 GB larger afterwards.
fn return_memory_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's mallopt(3): M_MMAP_THRESHOLD = -3, M_ARENA_MAX = -8.
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tuning; called once before the
        // runtime's threads start.
        unsafe {
            mallopt(-3, 1 << 20);
            mallopt(-8, 4);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
