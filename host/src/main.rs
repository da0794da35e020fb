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
    let log = payrail::cli::log_settings(&cli);
    let exporter = log
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| payrail::telemetry::Exporter::start(endpoint, &log.otlp_service_name));
    let exporter = match exporter.transpose() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error [{}]: {e}", e.code());
            std::process::exit(2);
        }
    };
    init_logs(&log, exporter.as_ref());
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
    drop(runtime);
    if let Some(e) = exporter {
        e.shutdown();
    }
    std::process::exit(code);
}

/// stderr logs in the configured format, and the OTLP layer when traces
/// are exported.
fn init_logs(log: &payrail::config::LogConfig, exporter: Option<&payrail::telemetry::Exporter>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let json = log.format == payrail::config::LogFormat::Json;
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(exporter.map(|e| e.layer()))
        .init();
}
