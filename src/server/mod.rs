//! The web app and JSON API: one router ([`router`]) lists every route; handlers
//! live in `api.rs` (JSON) and `pages.rs` (askama pages); `error.rs` holds the
//! error policy; `json.rs` the wire formats. Handlers know nothing of gate
//! equations: they call [`crate::model::Model::trace`] and the analysis functions.

pub mod api;
pub mod error;
pub mod json;
pub mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{OnceCell, Semaphore};

pub use json::trace_json;

use crate::model::Model;

/// Request limits, all configurable by `serve` flags.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_text_chars: usize,
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: 1 << 20, max_text_chars: 20_000, max_concurrent: 2 }
    }
}

/// Shared, read-only server state.
#[derive(Clone)]
pub struct AppState {
    pub model: Arc<Model>,
    pub limits: Limits,
    /// Trace permits: a request that finds none answers 503 at once.
    pub permits: Arc<Semaphore>,
    /// The text cell pages show contexts from (shipped beside the model).
    pub reference: Arc<String>,
    /// Where the reference text came from, for the page.
    pub reference_name: Arc<String>,
    /// The reference text's trace, computed on first use.
    pub reference_trace: Arc<OnceCell<Arc<pages::ReferenceTrace>>>,
}

impl AppState {
    pub fn new(model: Model, limits: Limits, reference: String, reference_name: String) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            model: Arc::new(model),
            limits,
            reference: Arc::new(reference),
            reference_name: Arc::new(reference_name),
            reference_trace: Arc::new(OnceCell::new()),
        }
    }

    /// `GET /api/model`'s body.
    pub fn model_info(&self) -> serde_json::Value {
        let m = &self.model;
        serde_json::json!({
            "name": m.name,
            "arch": m.arch.name(),
            "layers": m.layers(),
            "hidden_size": m.hidden_size(),
            "vocab": m.vocab.chars().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "params": m.weights.param_count(),
            "train": m.train,
            "limits": {
                "max_body_bytes": self.limits.max_body_bytes,
                "max_text_chars": self.limits.max_text_chars,
                "max_concurrent": self.limits.max_concurrent,
            },
        })
    }
}

/// Every route of the app, in one place.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let static_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    Router::new()
        .route("/", get(pages::index).post(pages::index_post))
        .route("/cell/{layer}/{kind}/{n}", get(pages::cell))
        .route("/model", get(pages::model_card))
        .route("/healthz", get(api::healthz))
        .route("/api/model", get(api::model_info))
        .route("/api/trace", post(api::trace))
        .route("/api/view", post(api::view))
        .route("/api/cells/rank", post(api::rank_cells))
        .route("/api/openapi.json", get(api::openapi))
        .nest_service("/static", tower_http::services::ServeDir::new(static_dir))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `cellscope serve` flags.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model file. Default: the shipped Linux model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Longest text (in characters) a request may trace.
    #[arg(long, default_value_t = Limits::default().max_text_chars)]
    pub max_text_chars: usize,
    /// Traces running at once; more get 503 at once.
    #[arg(long, default_value_t = Limits::default().max_concurrent)]
    pub max_concurrent: usize,
    /// Text for cell pages' top contexts. Default: the reference text shipped
    /// beside the model (`<model>.reference.txt`), else the built-in C sample.
    #[arg(long)]
    pub reference: Option<PathBuf>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cellscope=info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = args.model.clone().unwrap_or_else(crate::cli::default_model_path);
    let model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let (reference, reference_name) = load_reference(&path, args.reference.as_deref())?;
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_text_chars: args.max_text_chars,
        max_concurrent: args.max_concurrent.max(1),
    };
    let addr: SocketAddr = args.addr.parse().with_context(|| format!("--addr {:?} is not host:port", args.addr))?;
    let state = AppState::new(model, limits, reference, reference_name);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(
            "serving {} ({} layers × {} cells) on http://{}",
            state.model.name,
            state.model.layers(),
            state.model.hidden_size(),
            listener.local_addr()?
        );
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
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
