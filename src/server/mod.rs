//! The web app and JSON API (being written).

use crate::model::{Kind, Model, Trace};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model file. Default: the shipped Linux model.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: String,
}

pub fn serve_blocking(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}

/// The trace as the API's JSON (DESIGN §5).
pub fn trace_json(
    model: &Model,
    trace: &Trace,
    layers: Option<&[usize]>,
    kinds: &[Kind],
    cells: Option<&[usize]>,
    top_k: usize,
) -> serde_json::Value {
    let _ = (model, trace, layers, kinds, cells, top_k);
    serde_json::json!({})
}
