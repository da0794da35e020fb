//! The `payrail-bench` binary (`payrail bench` runs it): see
//! `payrail-bench --help` and docs/performance.md.

use clap::{Parser, Subcommand};
use payrail::context::{Context, DbArgs};
use payrail_bench::BenchArgs;
use payrail_bench::yardstick::{self, YardstickArgs};

/// mimalloc, as in the `payrail` binary: the in-process path runs the
/// processor in this process, and glibc malloc would make it slower than
/// the server it stands for (docs/performance-history.md, item 9).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark payrail against the PL/pgSQL baseline on the same Postgres.
#[derive(Debug, Parser)]
#[command(name = "payrail-bench", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    bench: BenchArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Host instructions per payment, counted by callgrind (needs
    /// valgrind; docs/performance.md, "The yardstick").
    Yardstick(YardstickArgs),
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
    // The yardstick's measured process runs on one thread: which worker
    // picks up a wake-up, and how often workers steal from each other,
    // would otherwise change the count from run to run.
    let measured = matches!(&cli.command, Some(Command::Yardstick(y)) if y.measured.is_some());
    let mut builder = if measured {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
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
    if let Some(Command::Yardstick(args)) = &cli.command {
        // the server's URL only: the yardstick builds its own pools and
        // engine from fixed settings
        let url = payrail::db::resolve_url(cli.db.database_url.clone()).await?;
        return yardstick::run(&url, args).await;
    }
    let ctx = Context::open(&cli.db).await?;
    payrail_bench::run(&ctx, &cli.bench).await
}
