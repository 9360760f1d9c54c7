//! `cellscope find-cells` (being written).

#[derive(clap::Args, Debug)]
pub struct FindCellsArgs {}

pub fn cmd_find_cells(_a: FindCellsArgs) -> anyhow::Result<()> {
    anyhow::bail!("find-cells is not built yet")
}
