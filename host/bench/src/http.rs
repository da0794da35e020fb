//! The HTTP path: `payrail serve` children (this same binary) on real
//! sockets, and a keep-alive client that pays through `POST /v1/payments`.

use crate::sys::{self, Proc};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use payrail::error::{Error, Result};
use payrail::model::PaymentRequest;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a child may take to drain and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest one bench request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What `payrail serve` prints once it listens (then the URL).
const LISTENING: &str = "payrail listening on ";

/// One `payrail serve` child process.
pub struct ServeChild {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

impl ServeChild {
    /// Starts `exe serve --listen 127.0.0.1:0` on database `url` with a
    /// pool of `pool_size`. The environment is passed through (processor
    /// and batching settings apply as in production); the URL goes in
    /// `DATABASE_URL`, not on the command line where `ps` would show it.
    /// Request logs are at `warn` unless `PAYRAIL_LOG` says otherwise (one
    /// log line per request would measure the terminal). Its stderr goes to
    /// `log`.
    ///
    /// `batch_workers`, when given, sets `PAYRAIL_BATCH_WORKERS` for the
    /// child (scale-out runs divide the workers between the processes).
    pub async fn start(
        exe: &Path,
        url: &str,
        pool_size: usize,
        batch_workers: Option<usize>,
        log: &Path,
    ) -> Result<ServeChild> {
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", url)
            .env("PAYRAIL_POOL_SIZE", pool_size.to_string());
        if std::env::var_os("PAYRAIL_LOG").is_none() {
            cmd.env("PAYRAIL_LOG", "warn");
        }
        if let Some(workers) = batch_workers {
            cmd.env("PAYRAIL_BATCH_WORKERS", workers.to_string());
        }
        ServeChild::spawn(cmd, log).await
    }

    /// Starts `cmd`, a command that runs `payrail serve --listen
    /// 127.0.0.1:0` (directly or under a wrapper such as valgrind), with
    /// its stderr to `log`, and waits until it prints its address.
    pub async fn spawn(mut cmd: Command, log: &Path) -> Result<ServeChild> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot start payrail serve: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Setup("payrail serve exited at once".into()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base_url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(LISTENING) {
                    return Ok(Some(url.trim().to_string()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let base_url = match base_url {
            Ok(Ok(Some(u))) => u,
            other => {
                let _ = child.start_kill();
                let why = match other {
                    Err(_) => format!("did not listen within {} s", START_TIMEOUT.as_secs()),
                    Ok(Err(e)) => format!("its output could not be read: {e}"),
                    Ok(Ok(_)) => "exited before listening".into(),
                };
                return Err(Error::Setup(format!(
                    "payrail serve {why}; see {}",
                    log.display()
                )));
            }
        };
        // keep reading so a full pipe never blocks the child
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServeChild {
            child,
            pid,
            base_url,
        })
    }

    /// The child's CPU time so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        sys::cpu_time(Proc::Pid(self.pid))
    }

    /// The child's peak RSS so far.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        sys::peak_rss_bytes(Proc::Pid(self.pid))
    }

    /// SIGTERM, then wait for the drain; SIGKILL if it takes too long.
    /// Returns whether it exited 0 by itself.
    pub async fn stop(mut self) -> bool {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if term.is_ok_and(|s| s.success())
            && let Ok(Ok(status)) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await
        {
            return status.success();
        }
        let _ = self.child.kill().await;
        false
    }
}

/// Sums of the serve metrics the bench reads (`GET /metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeMetrics {
    /// Seconds spent in plugin calls (wall clock).
    pub plugin_seconds: f64,
    /// CPU seconds the sampled plugin calls used.
    pub plugin_cpu_seconds: f64,
    /// Plugin calls whose CPU time was sampled.
    pub plugin_cpu_calls: f64,
    /// Plugin calls.
    pub plugin_calls: f64,
    /// Seconds spent claiming keys and taking locks.
    pub lock_wait_seconds: f64,
    /// Payments the lock wait is over.
    pub lock_waits: f64,
    /// Payments batches put back because another transaction held one of
    /// their accounts.
    pub batch_deferrals: f64,
}

impl ServeMetrics {
    /// The growth from `earlier` to `self`.
    pub fn since(&self, earlier: &ServeMetrics) -> ServeMetrics {
        ServeMetrics {
            plugin_seconds: self.plugin_seconds - earlier.plugin_seconds,
            plugin_cpu_seconds: self.plugin_cpu_seconds - earlier.plugin_cpu_seconds,
            plugin_cpu_calls: self.plugin_cpu_calls - earlier.plugin_cpu_calls,
            plugin_calls: self.plugin_calls - earlier.plugin_calls,
            lock_wait_seconds: self.lock_wait_seconds - earlier.lock_wait_seconds,
            lock_waits: self.lock_waits - earlier.lock_waits,
            batch_deferrals: self.batch_deferrals - earlier.batch_deferrals,
        }
    }

    /// Adds another server's metrics.
    pub fn add(&mut self, o: &ServeMetrics) {
        self.plugin_seconds += o.plugin_seconds;
        self.plugin_cpu_seconds += o.plugin_cpu_seconds;
        self.plugin_cpu_calls += o.plugin_cpu_calls;
        self.plugin_calls += o.plugin_calls;
        self.lock_wait_seconds += o.lock_wait_seconds;
        self.lock_waits += o.lock_waits;
        self.batch_deferrals += o.batch_deferrals;
    }

    /// Reads the sums out of the Prometheus text (all label sets added).
    pub fn parse(text: &str) -> ServeMetrics {
        let mut m = ServeMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let name = name_labels.split('{').next().unwrap_or_default();
            match name {
                "payrail_plugin_call_duration_seconds_sum" => m.plugin_seconds += v,
                "payrail_plugin_call_duration_seconds_count" => m.plugin_calls += v,
                "payrail_plugin_call_cpu_seconds_sum" => m.plugin_cpu_seconds += v,
                "payrail_plugin_call_cpu_seconds_count" => m.plugin_cpu_calls += v,
                "payrail_lock_wait_seconds_sum" => m.lock_wait_seconds += v,
                "payrail_lock_wait_seconds_count" => m.lock_waits += v,
                "payrail_batch_deferrals_total" => m.batch_deferrals += v,
                _ => {}
            }
        }
        m
    }
}

/// Keep-alive connections to one `payrail serve`.
///
/// Payments go over hyper's connection API, not reqwest: per payment,
/// reqwest cost the bench process about 39 µs of CPU (URL parsing, its
/// pool, its layers), on the same 2 cores as the server and Postgres under
/// test, while the peer's load generator (pgbench) is C. A stack of idle
/// connections is all the pooling a bench client needs.
struct Server {
    /// `127.0.0.1:PORT`, to connect to and for the `host` header.
    authority: String,
    /// Connections not in use, at most `max_idle`.
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
}

impl Server {
    /// An idle connection that can take a request, or a new one.
    async fn checkout(&self) -> std::result::Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let conn = self.idle.lock().expect("no panics while pooling").pop();
            match conn {
                Some(mut c) if !c.is_closed() => {
                    if c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.authority))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Returns a connection whose exchange finished.
    fn checkin(&self, conn: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().expect("no panics while pooling");
        if idle.len() < self.max_idle && !conn.is_closed() {
            idle.push(conn);
        }
    }
}

/// A keep-alive HTTP client over one or more servers.
pub struct HttpTarget {
    /// For the rare requests (metrics): convenience over speed.
    client: reqwest::Client,
    bases: Vec<String>,
    servers: Vec<Server>,
    bearer: HeaderValue,
}

/// The body of `POST /v1/payments`, as a client sends it.
#[derive(serde::Serialize)]
struct PayBody<'a> {
    kind: &'a str,
    source: &'a str,
    destination: &'a str,
    amount: i64,
    currency: &'a str,
}

impl HttpTarget {
    /// A client for `bases` (`http://HOST:PORT`; client `i` talks to
    /// `bases[i % len]`) with API key `secret`, keeping up to `max_clients`
    /// idle connections per server.
    pub fn new(bases: Vec<String>, secret: String, max_clients: usize) -> Result<HttpTarget> {
        assert!(!bases.is_empty(), "at least one server");
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Setup(format!("cannot build the HTTP client: {e}")))?;
        let servers = bases
            .iter()
            .map(|base| {
                let authority = base.strip_prefix("http://").ok_or_else(|| {
                    Error::Setup(format!("{base} is not an http:// URL of a bench server"))
                })?;
                Ok(Server {
                    authority: authority.trim_end_matches('/').to_string(),
                    idle: std::sync::Mutex::new(Vec::with_capacity(max_clients)),
                    max_idle: max_clients,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|e| Error::Setup(format!("the API key is not a header value: {e}")))?;
        Ok(HttpTarget {
            client,
            bases,
            servers,
            bearer,
        })
    }

    /// `POST /v1/payments`: `Ok(true)` approved, `Ok(false)` declined.
    pub async fn pay(
        &self,
        client: usize,
        key: &str,
        req: &PaymentRequest,
    ) -> std::result::Result<bool, String> {
        let server = &self.servers[client % self.servers.len()];
        let body = serde_json::to_vec(&PayBody {
            kind: &req.kind,
            source: &req.source,
            destination: &req.destination,
            amount: req.amount,
            currency: &req.currency,
        })
        .map_err(|e| format!("encoding the request: {e}"))?;
        let request = hyper::Request::post("/v1/payments")
            .header(header::HOST, &server.authority)
            .header(header::AUTHORIZATION, &self.bearer)
            .header("idempotency-key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let mut conn = server.checkout().await?;
        let exchange = async {
            let resp = conn
                .send_request(request)
                .await
                .map_err(|e| format!("POST /v1/payments: {e}"))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))??;
        server.checkin(conn);
        if status.as_u16() != 201 {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            status: String,
        }
        let a: Answer =
            serde_json::from_slice(&bytes).map_err(|e| format!("unexpected answer: {e}"))?;
        Ok(a.status == "approved")
    }

    /// Sum of the metrics of every server.
    pub async fn metrics(&self) -> Result<ServeMetrics> {
        let mut total = ServeMetrics::default();
        for base in &self.bases {
            let text = self
                .client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| Error::Setup(format!("GET {base}/metrics: {e}")))?
                .text()
                .await
                .map_err(|e| Error::Setup(format!("GET {base}/metrics: {e}")))?;
            total.add(&ServeMetrics::parse(&text));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_metrics_it_needs() {
        let text = "# TYPE payrail_plugin_call_duration_seconds histogram\n\
            payrail_plugin_call_duration_seconds_bucket{digest=\"ab\",le=\"0.001\"} 3\n\
            payrail_plugin_call_duration_seconds_sum{digest=\"ab\"} 0.5\n\
            payrail_plugin_call_duration_seconds_count{digest=\"ab\"} 3\n\
            payrail_plugin_call_duration_seconds_sum{digest=\"cd\"} 0.25\n\
            payrail_plugin_call_duration_seconds_count{digest=\"cd\"} 1\n\
            payrail_plugin_call_cpu_seconds_sum{digest=\"ab\"} 0.125\n\
            payrail_plugin_call_cpu_seconds_sum{digest=\"cd\"} 0.0625\n\
            payrail_plugin_call_cpu_seconds_count{digest=\"ab\"} 1\n\
            payrail_lock_wait_seconds_sum 2\n\
            payrail_lock_wait_seconds_count 4\n\
            payrail_batch_deferrals_total 7\n";
        let m = ServeMetrics::parse(text);
        assert_eq!(m.plugin_seconds, 0.75);
        assert_eq!(m.plugin_calls, 4.0);
        assert_eq!(m.plugin_cpu_seconds, 0.1875);
        assert_eq!(m.plugin_cpu_calls, 1.0);
        assert_eq!(m.lock_wait_seconds, 2.0);
        assert_eq!(m.lock_waits, 4.0);
        assert_eq!(m.batch_deferrals, 7.0);
        let d = m.since(&ServeMetrics {
            plugin_calls: 1.0,
            ..Default::default()
        });
        assert_eq!(d.plugin_calls, 3.0);
    }
}
