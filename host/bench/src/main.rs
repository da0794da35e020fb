//! The `payrail-bench` binary (`payrail bench` runs it): see
//! `payrail-bench --help` and docs/performance.md.

use clap::Parser;
use payrail::context::{Context, DbArgs};
use payrail_bench::BenchArgs;

/// mimalloc, as in the `payrail` binary: the in-process path runs the
/// processor in this process, and glibc malloc would make it slower than
/// the server it stands for (docs/performance-history.md, item 9).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark payrail against the PL/pgSQL baseline on the same Postgres.
#[derive(Debug, Parser)]
#[command(name = "payrail-bench", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    bench: BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    // as `payrail bench` logged before it was a binary of its own
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let code = match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error [{}]: {e}", e.code());
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: &Cli) -> payrail::Result<i32> {
    let ctx = Context::open(&cli.db).await?;
    payrail_bench::run(&ctx, &cli.bench).await
}
