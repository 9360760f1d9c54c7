//! The web app and JSON API: one router ([`router`]) lists every route; handlers
//! live in `api.rs` (JSON) and `pages.rs` (askama pages); `error.rs` holds the
//! error policy; `json.rs` the wire formats. Every request passes `guard.rs`
//! (host allow-list, JSON only, body size and deadline, security headers); every
//! model run waits its turn in `queue.rs`; `probe.rs` fits and scores concept directions; `net.rs` is the accept loop (timeouts,
//! connection cap, graceful shutdown). Handlers know nothing of gate equations:
//! they call [`crate::model::Model::trace`] and the analysis functions.

pub mod api;
pub mod cache;
pub mod causal;
pub mod error;
pub mod guard;
pub mod json;
pub mod memory;
pub mod net;
pub mod pages;
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
use net::NetLimits;
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

/// Shared, read-only server state.
#[derive(Clone)]
pub struct AppState {
    pub model: Arc<Model>,
    pub limits: Limits,
    /// Model slots and the line in front of them.
    pub queue: Arc<WorkQueue>,
    /// Recent traces, by text.
    pub traces: Arc<cache::TraceCache>,
    /// Host names accepted besides IP literals and localhost (`--allow-host`).
    pub allowed_hosts: Arc<Vec<String>>,
    /// Origins allowed to call the API from other sites (`--cors-origin`); none by default.
    pub cors_origins: Arc<Vec<String>>,
    /// The text cell pages show contexts from (shipped beside the model).
    pub reference: Arc<String>,
    /// Where the reference text came from, for the page.
    pub reference_name: Arc<String>,
    /// The reference text's trace, computed on first use.
    pub reference_trace: Arc<OnceCell<Arc<pages::ReferenceTrace>>>,
    /// The built-in samples' traces, computed on first use, so the home page never
    /// waits in the queue behind API work.
    pub sample_traces: Arc<Vec<OnceCell<Arc<Trace>>>>,
    /// Per built-in sample, the cell the home page opens on (the finder's best
    /// string or if cell on it), chosen on first use.
    pub first_views: Arc<Vec<OnceCell<Option<pages::FirstView>>>>,
    /// The memory horizon over the reference text, computed on first use.
    pub horizon: Arc<OnceCell<crate::model::Horizon>>,
}

impl AppState {
    pub fn new(model: Model, limits: Limits, reference: String, reference_name: String) -> Self {
        Self {
            queue: Arc::new(WorkQueue::new(limits.max_concurrent, limits.max_queue)),
            traces: Arc::new(cache::TraceCache::new(limits.trace_cache_bytes)),
            model: Arc::new(model),
            limits,
            allowed_hosts: Arc::new(Vec::new()),
            cors_origins: Arc::new(Vec::new()),
            reference: Arc::new(reference),
            reference_name: Arc::new(reference_name),
            reference_trace: Arc::new(OnceCell::new()),
            sample_traces: Arc::new(pages::SAMPLES.iter().map(|_| OnceCell::new()).collect()),
            first_views: Arc::new(pages::SAMPLES.iter().map(|_| OnceCell::new()).collect()),
            horizon: Arc::new(OnceCell::new()),
        }
    }

    /// `GET /api/model`'s body.
    pub fn model_info(&self) -> api::ModelInfo<'_> {
        let m = &self.model;
        let l = &self.limits;
        api::ModelInfo {
            name: &m.name,
            arch: m.arch().name(),
            layers: m.layers(),
            hidden_size: m.hidden_size(),
            vocab: m.vocab.chars().iter().map(|c| c.to_string()).collect(),
            params: m.weights.param_count(),
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
        .route("/healthz", get(api::healthz))
        .route("/api/model", get(api::model_info))
        .route("/api/trace", post(api::trace))
        .route("/api/view", post(api::view))
        .route("/api/cells/rank", post(api::rank_cells))
        .route("/api/probe", post(probe::probe))
        .route("/api/probe/score", post(probe::score))
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

/// `cellscope serve` flags.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model file. Default: the shipped Linux model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// HOST:PORT to listen on (a name such as localhost:3001 is resolved).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Longest text (in characters) a request may trace.
    #[arg(long, default_value_t = Limits::default().max_text_chars)]
    pub max_text_chars: usize,
    /// Model runs (trace and answer) at once; each holds one text's trace in memory.
    #[arg(long, default_value_t = Limits::default().max_concurrent)]
    pub max_concurrent: usize,
    /// Requests that may wait for a model slot; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = Limits::default().max_queue)]
    pub max_queue: usize,
    /// Largest answer in bytes (estimated before any work; 413 beyond it).
    #[arg(long, default_value_t = Limits::default().max_response_bytes)]
    pub max_response_bytes: usize,
    /// Megabytes of recent traces kept so the same text is not traced twice (0 = off).
    #[arg(long, default_value_t = Limits::default().trace_cache_bytes >> 20)]
    pub trace_cache_mb: usize,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = NetLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's head (also the idle keep-alive timeout).
    #[arg(long, default_value_t = NetLimits::default().header_timeout.as_secs())]
    pub header_timeout: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, default_value_t = Limits::default().body_timeout_secs)]
    pub body_timeout: u64,
    /// Seconds to let requests in flight finish after Ctrl-C / SIGTERM.
    #[arg(long, default_value_t = NetLimits::default().shutdown_grace.as_secs())]
    pub shutdown_grace: u64,
    /// Also answer to this Host name (repeatable; `*` for any). IP literals and
    /// localhost are always accepted.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Let pages from this origin (e.g. http://localhost:8888 for Jupyter) call the
    /// API (repeatable). Default: no cross-origin access.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Text for cell pages' top contexts. Default: the reference text shipped
    /// beside the model (`<model>.reference.txt`), else the built-in C sample.
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

impl ServeArgs {
    fn limits(&self) -> anyhow::Result<(Limits, NetLimits)> {
        let limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_text_chars: self.max_text_chars,
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            max_response_bytes: self.max_response_bytes,
            body_timeout_secs: self.body_timeout,
            trace_cache_bytes: self.trace_cache_mb.min(1 << 20) << 20,
        };
        limits.validate()?;
        for (flag, v) in [("--header-timeout", self.header_timeout), ("--shutdown-grace", self.shutdown_grace)] {
            if !(1..=3600).contains(&v) {
                bail!("{flag} {v} is out of range: use 1..=3600 seconds");
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            bail!("--max-connections {} is out of range: use 1..=65536", self.max_connections);
        }
        let net = NetLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
        };
        Ok((limits, net))
    }
}

/// Loads the reference text: the flag, else `<model stem>.reference.txt` beside
/// the model, else the built-in sample.
pub fn load_reference(
    model_path: &std::path::Path,
    flag: Option<&std::path::Path>,
) -> anyhow::Result<(String, String)> {
    if let Some(p) = flag {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading --reference {}", p.display()))?;
        return Ok((text, p.display().to_string()));
    }
    let beside = model_path.with_extension("reference.txt");
    if let Ok(text) = std::fs::read_to_string(&beside) {
        return Ok((text, beside.file_name().map_or(String::new(), |s| s.to_string_lossy().into_owned())));
    }
    Ok((pages::SAMPLES[0].text.to_string(), "built-in C sample".into()))
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn serve_blocking(args: ServeArgs) -> anyhow::Result<()> {
    let (limits, net) = args.limits()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cellscope=info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = args.model.clone().unwrap_or_else(crate::model::default_model_path);
    let model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let (reference, reference_name) = load_reference(&path, args.reference.as_deref())?;
    let mut state = AppState::new(model, limits, reference, reference_name);
    let (bind_host, _) = args
        .addr
        .rsplit_once(':')
        .with_context(|| format!("--addr {:?} is not HOST:PORT (e.g. 127.0.0.1:3000 or localhost:3001)", args.addr))?;
    let mut hosts: Vec<String> = args.allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.push(bind_host.trim_matches(['[', ']']).to_ascii_lowercase());
    state.allowed_hosts = Arc::new(hosts);
    state.cors_origins = Arc::new(args.cors_origins.clone());
    return_memory_to_the_system();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&args.addr)
            .await
            .with_context(|| format!("--addr {:?}: cannot resolve it (use HOST:PORT, e.g. 127.0.0.1:3000)", args.addr))?
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
            (None, None) => anyhow::bail!("--addr {:?} resolves to no address", args.addr),
        };
        tracing::info!(
            "serving {} ({} layers × {} cells) on http://{}",
            state.model.name,
            state.model.layers(),
            state.model.hidden_size(),
            listener.local_addr()?
        );
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
