pub async fn run(_c: &crate::cli::Context, _a: &BenchArgs) -> crate::Result<i32> {
    Ok(0)
}
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
