//! The `payrail` binary: see `payrail --help`.

use clap::Parser;

/// mimalloc instead of glibc malloc: the host allocates many small, short-lived
/// values per payment (JSON, strings), and glibc's malloc/free were about a
/// third of its CPU under `payrail bench` (docs/performance-history.md,
/// item 9).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = payrail::cli::Cli::parse();
    let (format, filter) = payrail::cli::log_settings(&cli);
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        payrail::config::LogFormat::Json => logs.json().init(),
        payrail::config::LogFormat::Text => logs.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let code = match runtime.block_on(payrail::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error [{}]: {e}", e.code());
            2
        }
    };
    std::process::exit(code);
}
