//! The HTTP/1 server loop (docs/tenancy.md, "Connections"): hyper with a
//! header read timeout and a bound on open connections, instead of
//! `axum::serve`, which has neither (a client dribbling its headers one
//! byte at a time would hold a task and a file descriptor forever, and
//! enough of them exhaust the process's descriptors, the database's
//! connections included).
//!
//! - `header_read_timeout`: a connection that has not sent a whole request
//!   head this long after it opened (or after its last response, when idle
//!   on keep-alive) is closed.
//! - `max_connections`: at the bound, a new connection closes the least
//!   recently active connection that has no request running, those that
//!   never sent a whole request head (dribblers) first, then keep-alive
//!   connections idle between requests; if every connection has a request
//!   running, the new one is answered 503 and closed. So a slowloris
//!   cannot keep the server from answering clients that send whole
//!   requests.

use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

/// Bounds of the connection layer (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest a client may take to send a request head (also the idle
    /// keep-alive bound).
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Pause after a failed `accept` (EMFILE and the like), so the loop waits
/// for a descriptor instead of spinning.
const ACCEPT_RETRY_MS: u64 = 50;
/// Longest the 503 of a refused connection may take to write: a peer that
/// does not read gets nothing more.
const REFUSE_WRITE_MS: u64 = 100;

impl Default for ConnLimits {
    fn default() -> Self {
        // the configuration's defaults, written once there
        let s = crate::config::ServerConfig::default();
        ConnLimits {
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
            max_connections: s.max_connections,
        }
    }
}

/// One open connection.
struct Slot {
    /// Requests running on it (0 or 1 on HTTP/1).
    busy: usize,
    /// When it opened or last finished a request.
    last_active: Instant,
    /// Whether it has sent a whole request head (a dribbler never has).
    served: bool,
    /// Closes it (dropping its connection future closes the socket).
    kill: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Table {
    next: u64,
    slots: HashMap<u64, Slot>,
}

type Shared = Arc<Mutex<Table>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Admits a connection: its id and its kill switch, or `None` (refuse)
/// when every slot has a request running. At the bound, closes the least
/// recently active idle connection first.
fn admit(table: &Shared, max: usize, metrics: &Metrics) -> Option<(u64, oneshot::Receiver<()>)> {
    let mut t = lock(table);
    if t.slots.len() >= max {
        let victim = t
            .slots
            .iter()
            .filter(|(_, s)| s.busy == 0)
            // never-served (dribbling) connections first, then by idleness
            .min_by_key(|(_, s)| (s.served, s.last_active))
            .map(|(id, _)| *id);
        let Some(victim) = victim else {
            metrics
                .tenancy
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some(mut s) = t.slots.remove(&victim)
            && let Some(kill) = s.kill.take()
        {
            let _ = kill.send(());
        }
        metrics
            .tenancy
            .connections_evicted
            .fetch_add(1, Ordering::Relaxed);
    }
    let (tx, rx) = oneshot::channel();
    let id = t.next;
    t.next += 1;
    t.slots.insert(
        id,
        Slot {
            busy: 0,
            last_active: Instant::now(),
            served: false,
            kill: Some(tx),
        },
    );
    Some((id, rx))
}

/// Marks a request running on connection `id` until dropped.
struct Busy {
    table: Shared,
    id: u64,
}

impl Busy {
    fn start(table: &Shared, id: u64) -> Busy {
        if let Some(s) = lock(table).slots.get_mut(&id) {
            s.busy += 1;
            s.served = true;
        }
        Busy {
            table: table.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.table).slots.get_mut(&self.id) {
            s.busy = s.busy.saturating_sub(1);
            s.last_active = Instant::now();
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then stops
/// accepting, asks every connection to finish its request and close, and
/// returns once all have (the caller bounds that wait).
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let table: Shared = Arc::default();
    // every connection task holds a receiver; all dropped = all closed
    let (closed_tx, closed_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some((id, kill)) = admit(&table, limits.max_connections, &metrics) else {
            if tls.is_none() {
                refuse(stream);
            }
            // a TLS client would read a plain 503 as garbage: just close
            continue;
        };
        tokio::spawn(connection(
            stream,
            tls.clone(),
            router.clone(),
            limits,
            (table.clone(), id, kill),
            stop.clone(),
            closed_rx.clone(),
        ));
    }
    drop(listener);
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Answers 503 on a connection refused at the bound, without waiting.
fn refuse(mut stream: tokio::net::TcpStream) {
    tokio::spawn(async move {
        let answer = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let _ = tokio::time::timeout(
            Duration::from_millis(REFUSE_WRITE_MS),
            stream.write_all(answer),
        )
        .await;
    });
}

/// One connection: the TLS handshake (bounded like a request head: a
/// client that stalls it is a slowloris too), then HTTP/1.
async fn connection(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: ConnLimits,
    (table, id, mut kill): (Shared, u64, oneshot::Receiver<()>),
    stop: watch::Receiver<bool>,
    closed: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return http(stream, router, limits, (table, id, kill), stop, closed).await;
    };
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                lock(&table).slots.remove(&id);
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                lock(&table).slots.remove(&id);
                return;
            }
        },
        _ = &mut kill => {
            lock(&table).slots.remove(&id);
            return;
        }
    };
    http(stream, router, limits, (table, id, kill), stop, closed).await
}

/// Serves HTTP/1 on `stream` until the client closes, the connection is
/// evicted (`kill`), or the server drains (`stop`).
async fn http<S>(
    stream: S,
    router: Router,
    limits: ConnLimits,
    (table, id, mut kill): (Shared, u64, oneshot::Receiver<()>),
    mut stop: watch::Receiver<bool>,
    _closed: watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_table = table.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::start(&service_table, id);
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = &mut kill => break,
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    lock(&table).slots.remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_least_recently_active_idle_connection_goes() {
        let table: Shared = Arc::default();
        let m = Metrics::default();
        let (a, mut kill_a) = admit(&table, 2, &m).unwrap();
        let (b, mut kill_b) = admit(&table, 2, &m).unwrap();
        // a has a request running: b (idle) is the one closed
        let busy = Busy::start(&table, a);
        drop(Busy::start(&table, b));
        // b has served a request, but it is the only idle one
        let (_c, _kill_c) = admit(&table, 2, &m).unwrap();
        assert!(kill_b.try_recv().is_ok(), "b was closed");
        assert!(kill_a.try_recv().is_err(), "a was kept");
        assert!(!lock(&table).slots.contains_key(&b));
        // a busy, c idle: c goes next
        assert!(admit(&table, 2, &m).is_some());
        drop(busy);
        // a served and idle now, d never served: d (a dribbler) goes first,
        // though a has been idle longer
        let t3: Shared = Arc::default();
        let (p, _kp) = admit(&t3, 2, &m).unwrap();
        drop(Busy::start(&t3, p));
        let (_d, mut kill_d) = admit(&t3, 2, &m).unwrap();
        assert!(admit(&t3, 2, &m).is_some());
        assert!(kill_d.try_recv().is_ok(), "the dribbler went first");
        assert!(lock(&t3).slots.contains_key(&p));
        assert_eq!(m.tenancy.connections_evicted.load(Ordering::Relaxed), 3);
        let t2: Shared = Arc::default();
        let (x, _kx) = admit(&t2, 1, &m).unwrap();
        let _busy = Busy::start(&t2, x);
        assert!(
            admit(&t2, 1, &m).is_none(),
            "every connection busy: refused"
        );
        assert_eq!(m.tenancy.connections_refused.load(Ordering::Relaxed), 1);
    }
}
