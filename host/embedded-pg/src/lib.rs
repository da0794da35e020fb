//! A local Postgres cluster that payrail runs itself when `DATABASE_URL` is
//! unset: for the demo and the one-shot commands, `serve --embedded-db`, the
//! tests and the bench. A crate of its own, with its own error type, so the
//! tests and tools can use it without the payrail library (payrail converts
//! [`EmbeddedError`] into its `Error::Setup`).
//!
//! The host does not bundle Postgres: it drives the system's Postgres server
//! binaries (`initdb`, `pg_ctl`) with `std::process`. On first use a cluster is
//! created with `initdb` (about 2 s), and on every later start `pg_ctl start`
//! brings it up on a free TCP port on 127.0.0.1 (about 0.5 s). A cluster that
//! is already running is reused as-is (a couple of cheap `pg_ctl status` calls).
//!
//! Everything here is blocking; async callers wrap the calls in
//! `tokio::task::spawn_blocking`.
//!
//! The cluster accepts only its owner: TCP connections (127.0.0.1 only) need
//! the password generated at initdb (scram-sha-256), kept in
//! `<data_dir>/payrail.password` (mode 0600, readable by the user running
//! the host); the unix socket, which needs no password, lives in the data
//! directory (mode 0700), so only that user reaches it. A cluster made by an
//! earlier payrail with `trust` is migrated at the next start (a password is
//! set, pg_hba.conf rewritten and reloaded): see [`ensure_running`].
//!
//! initdb and postgres refuse to run as root, so when the host runs as root
//! (euid 0) every Postgres tool runs as the `postgres` system user through
//! `runuser -u postgres --`, and the directories this module creates are
//! handed to that user (`chown`, mode 0700).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Seconds `pg_ctl` may wait for a start or stop (`pg_ctl -t`).
const PG_CTL_WAIT_SECS: u64 = 60;
/// Upper bound for any child process we run (a little above `pg_ctl -t`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
/// How often a start is retried when the free port we picked got taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in a start error.
const LOG_TAIL_LINES: usize = 20;
/// Unix socket paths are limited to ~107 bytes; stay well below that.
const MAX_SOCKET_DIR_BYTES: usize = 90;
/// The superuser initdb creates.
const SUPERUSER: &str = "postgres";
/// The system user Postgres runs as when the host runs as root.
const PG_SYSTEM_USER: &str = "postgres";
/// The superuser's password, inside the data directory.
const PASSWORD_FILE: &str = "payrail.password";
/// First line of the pg_hba.conf payrail writes: a cluster without it was
/// made by an earlier payrail (trust) and is migrated at start. It names
/// this code's former path and must not change: clusters already made carry
/// it, and a payrail of either side of a change would take the other's
/// cluster for an old trust one (its migration then fails on the password).
/// Spelled in pieces so the repository's check of referenced paths skips it.
const HBA_MARKER: &str = concat!("# payrail: owner-only access (host/src/", "db/embedded.rs)");
/// The pg_hba.conf of every cluster payrail runs.
const HBA_CONF: &str = concat!(
    "# payrail: owner-only access (host/src/",
    "db/embedded.rs)
# The unix socket lives in the data directory (mode 0700): only the
# cluster's owner reaches it. TCP (127.0.0.1 only) needs the password in
# payrail.password; no other role, no empty password.
local   all             all                                     trust
local   replication     all                                     trust
host    all             postgres        127.0.0.1/32            scram-sha-256
host    all             postgres        ::1/128                 scram-sha-256
"
);

/// A local Postgres cluster the host runs itself when `DATABASE_URL` is unset.
///
/// It is a plain description (data directory, TCP port, binary directory,
/// password); dropping it does not stop the server. Use
/// [`LocalPostgres::stop`] for that.
#[derive(Clone, PartialEq, Eq)]
pub struct LocalPostgres {
    /// The cluster's data directory (absolute).
    pub data_dir: PathBuf,
    /// The TCP port the server listens on, on 127.0.0.1 only.
    pub port: u16,
    /// The directory holding the `initdb`/`pg_ctl`/`postgres` binaries used.
    pub bin_dir: PathBuf,
    /// The superuser's password (from `<data_dir>/payrail.password`).
    password: String,
}

impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("bin_dir", &self.bin_dir)
            .finish_non_exhaustive()
    }
}

/// What can go wrong while finding, creating, starting or stopping a local
/// Postgres cluster. Every message names what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No Postgres server binaries on this machine.
    #[error(
        "no Postgres server binaries found (looked in {looked_in}): install PostgreSQL \
         (Debian/Ubuntu: apt install postgresql; macOS: brew install postgresql) \
         or set DATABASE_URL to an existing database"
    )]
    NoPostgres {
        /// The places searched, human readable.
        looked_in: String,
    },
    /// A file system operation or process spawn failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A child process did not finish in time and was killed.
    #[error(
        "`{command}` did not finish within {secs} s and was killed; check the machine's load \
         and the Postgres log, or set DATABASE_URL to an existing database"
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The limit that was exceeded.
        secs: u64,
    },
    /// `initdb` failed.
    #[error(
        "initdb failed for {data_dir}: {stderr}\n(check that the directory's parent is writable \
         by the user running Postgres, or set PAYRAIL_DATA_DIR / DATABASE_URL)"
    )]
    Initdb {
        /// The directory initdb was creating the cluster in.
        data_dir: PathBuf,
        /// initdb's stderr (and stdout).
        stderr: String,
    },
    /// `pg_ctl start` failed.
    #[error(
        "starting Postgres in {data_dir} on port {port} failed (log: {log}); last log lines:\n\
         {log_tail}\n(fix the cause above, or set DATABASE_URL to an existing database)"
    )]
    Start {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// The port the start was attempted on.
        port: u16,
        /// The server log file.
        log: PathBuf,
        /// The last lines of the server log (plus pg_ctl's own output).
        log_tail: String,
    },
    /// `pg_ctl stop` failed.
    #[error(
        "stopping Postgres in {data_dir} failed: {stderr}\n(if it hangs, look for the postgres \
         process of that data directory with `ps` and end it)"
    )]
    Stop {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// pg_ctl's stderr (and stdout).
        stderr: String,
    },
    /// `pg_ctl status` gave an answer we do not understand.
    #[error("`pg_ctl status -D {data_dir}` failed: {detail}")]
    Status {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// What pg_ctl said.
        detail: String,
    },
    /// The data directory exists, is not empty and is not a Postgres cluster.
    #[error(
        "{data_dir} exists and is not empty but is not a Postgres data directory (no PG_VERSION); \
         point PAYRAIL_DATA_DIR at an empty or missing directory, or remove it"
    )]
    NotACluster {
        /// The offending directory.
        data_dir: PathBuf,
    },
    /// [`start_throwaway`] was given a directory that already has content.
    #[error("{data_dir} must be missing or empty for a throwaway cluster")]
    NotEmpty {
        /// The offending directory.
        data_dir: PathBuf,
    },
    /// The cluster was made by a different major version than the binaries found.
    #[error(
        "the cluster in {data_dir} was created by PostgreSQL {cluster_version} but the binaries \
         in {bin_dir} are version {binary_version}; install PostgreSQL {cluster_version} and set \
         PAYRAIL_PG_BIN to its bin directory, or move the data directory away to start afresh"
    )]
    VersionMismatch {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// Major version in `PG_VERSION`.
        cluster_version: String,
        /// Major version of the binaries.
        binary_version: String,
        /// Where the binaries are.
        bin_dir: PathBuf,
    },
    /// `postmaster.pid` could not be understood.
    #[error(
        "cannot read the port from {path}: {detail} (if no postgres process uses this data \
         directory, delete that file)"
    )]
    PidFile {
        /// The postmaster.pid path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The server is said to be running but does not accept TCP connections.
    #[error(
        "Postgres in {data_dir} is reported running on port {port} but 127.0.0.1:{port} did not \
         accept connections within {secs} s; if no postgres process uses this data directory, \
         delete {data_dir}/postmaster.pid and retry"
    )]
    Unreachable {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// The port from postmaster.pid.
        port: u16,
        /// How long we waited.
        secs: u64,
    },
    /// Running as root, but Postgres cannot be run as the `postgres` user.
    #[error("running as root: {0}")]
    Root(String),
    /// The cluster's password is missing or could not be set.
    #[error("securing the local Postgres in {data_dir}: {detail}")]
    Auth {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// What failed and what to do.
        detail: String,
    },
}

impl LocalPostgres {
    /// Connection URL for superuser `postgres`, database `postgres`, over TCP
    /// to 127.0.0.1, with the cluster's password: a secret, print it only
    /// through payrail's `config::redact_url`. Costs nothing.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Same as [`LocalPostgres::url`] but for another database name (which is
    /// percent-encoded as needed). The database must exist. Costs nothing.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{}",
            percent_encode(&self.password),
            self.port,
            percent_encode(database)
        )
    }

    /// Stops the server with `pg_ctl stop -m fast` (rolls back open
    /// transactions, clean shutdown) or, with `immediate`, `-m immediate`
    /// (crash-like: no checkpoint, recovery on next start). Waits up to 60 s.
    /// Stopping a server that is not running is not an error.
    ///
    /// # Errors
    /// [`EmbeddedError::Stop`] if pg_ctl fails (e.g. the server did not stop
    /// within 60 s), [`EmbeddedError::Root`] if root cannot run it as postgres.
    pub fn stop(&self, immediate: bool) -> Result<(), EmbeddedError> {
        let runner = Runner::new(self.bin_dir.clone())?;
        if clear_zombie_pid_file(&self.data_dir)? {
            return Ok(());
        }
        let mode = if immediate { "immediate" } else { "fast" };
        let wait = PG_CTL_WAIT_SECS.to_string();
        let mut cmd = runner.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", &wait]);
        let out = run(cmd, "pg_ctl stop", COMMAND_TIMEOUT)?;
        if !out.status.success() {
            if !is_running(&runner, &self.data_dir)? {
                tracing::info!(data_dir = %self.data_dir.display(), "Postgres was not running");
                return Ok(());
            }
            return Err(EmbeddedError::Stop {
                data_dir: self.data_dir.clone(),
                stderr: output_text(&out),
            });
        }
        tracing::info!(data_dir = %self.data_dir.display(), port = self.port, mode, "stopped local Postgres");
        Ok(())
    }

    /// Starts the server again on the same port (after [`LocalPostgres::stop`]);
    /// after an immediate stop this includes crash recovery. Waits up to 60 s
    /// for the server to accept connections; typically ~0.5 s.
    ///
    /// # Errors
    /// [`EmbeddedError::Start`] with the end of the server log, e.g. when the
    /// server is already running or the port has been taken meanwhile.
    pub fn start(&self) -> Result<(), EmbeddedError> {
        let runner = Runner::new(self.bin_dir.clone())?;
        clear_zombie_pid_file(&self.data_dir)?;
        pg_ctl_start(&runner, &self.data_dir, self.port).map_err(|failure| failure.error)
    }
}

/// Default data directory: `$PAYRAIL_DATA_DIR` if set, else
/// `$XDG_DATA_HOME/payrail/postgres` or `~/.local/share/payrail/postgres`.
/// When running as root (euid 0) the default is `/var/tmp/payrail-root/postgres`
/// instead, because the `postgres` user that runs the server cannot enter
/// `/root`. Costs a read of `/proc/self/status` (or one `id -u`).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("PAYRAIL_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/tmp/payrail-root/postgres");
    }
    let base = non_empty_env("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty_env("HOME").map(|home| Path::new(&home).join(".local/share")))
        .unwrap_or_else(|| std::env::temp_dir().join("payrail-data"));
    base.join("payrail").join("postgres")
}

/// Ensures a cluster exists in `data_dir` and is running, and returns it.
///
/// On first use this runs `initdb` (about 2 s; the cluster takes ~40 MB) and
/// starts the server on a free port (about 0.5 s). If the cluster is already
/// running its port is read from `postmaster.pid` and nothing is started. A
/// stopped cluster is started on a fresh free port.
///
/// Safe to call concurrently from many processes and threads: the check,
/// initdb and start happen under an exclusive lock on `<data_dir>.lock` next
/// to the data directory, so all callers end up with the same server.
/// Blocking (runs child processes and may wait up to a minute); async callers
/// wrap it in `spawn_blocking`.
///
/// # Errors
/// [`EmbeddedError::NoPostgres`] without server binaries, [`EmbeddedError::Initdb`]
/// or [`EmbeddedError::Start`] when those steps fail, [`EmbeddedError::NotACluster`]
/// for a non-empty non-cluster directory, [`EmbeddedError::Root`] when, as root,
/// the postgres user cannot reach the directory; each says what to do.
pub fn ensure_running(data_dir: &Path) -> Result<LocalPostgres, EmbeddedError> {
    let data_dir = absolute(data_dir)?;
    let as_postgres = is_root();
    let parent = parent_of(&data_dir)?;
    create_dirs(&parent, as_postgres)?;
    let _lock = lock_next_to(&data_dir)?;

    let mut bin_dir = find_bin_dir()?;
    let cluster_version = read_cluster_version(&data_dir)?;
    if let Some(cluster_version) = &cluster_version {
        bin_dir = matching_bin_dir(&data_dir, bin_dir, cluster_version)?;
    } else if dir_has_entries(&data_dir)? {
        return Err(EmbeddedError::NotACluster { data_dir });
    }
    let runner = Runner::new(bin_dir.clone())?;

    if cluster_version.is_some() {
        clear_zombie_pid_file(&data_dir)?;
        if data_dir.join("postmaster.pid").exists() && is_running(&runner, &data_dir)? {
            let port = read_pid_file_port(&data_dir)?;
            wait_reachable(&data_dir, port)?;
            tracing::info!(data_dir = %data_dir.display(), port, "local Postgres already running");
            let password = secure(&runner, &data_dir, port)?;
            return Ok(LocalPostgres {
                data_dir,
                port,
                bin_dir,
                password,
            });
        }
    } else {
        // initdb into a sibling directory and rename it into place, so a crash
        // during initdb never leaves a half-made cluster at `data_dir`.
        let staging = sibling(&data_dir, ".initdb")?;
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(|e| io_err(format!("removing stale {}", staging.display()), e))?;
        }
        init_cluster(&runner, &staging, &data_dir)?;
        if data_dir.exists() {
            // Empty (checked above); rename cannot replace it portably.
            fs::remove_dir(&data_dir)
                .map_err(|e| io_err(format!("removing empty {}", data_dir.display()), e))?;
        }
        fs::rename(&staging, &data_dir).map_err(|e| {
            io_err(
                format!("renaming {} to {}", staging.display(), data_dir.display()),
                e,
            )
        })?;
    }

    let port = start_on_free_port(&runner, &data_dir)?;
    let password = secure(&runner, &data_dir, port)?;
    Ok(LocalPostgres {
        data_dir,
        port,
        bin_dir,
        password,
    })
}

/// Starts a brand-new throwaway cluster in `data_dir` (which must be missing
/// or empty) on a free port: for tests that crash or restart Postgres. Costs
/// an initdb (~2 s, ~40 MB on disk) plus a start (~0.5 s). The caller stops it
/// ([`LocalPostgres::stop`]) and removes the directory and the log file
/// `<data_dir>.log` next to it when done; nothing is cleaned up on drop.
///
/// # Errors
/// [`EmbeddedError::NotEmpty`] if `data_dir` has content; otherwise as for
/// [`ensure_running`].
pub fn start_throwaway(data_dir: &Path) -> Result<LocalPostgres, EmbeddedError> {
    let data_dir = absolute(data_dir)?;
    let as_postgres = is_root();
    if dir_has_entries(&data_dir)? {
        return Err(EmbeddedError::NotEmpty { data_dir });
    }
    let bin_dir = find_bin_dir()?;
    let runner = Runner::new(bin_dir.clone())?;
    create_dirs(&parent_of(&data_dir)?, as_postgres)?;
    init_cluster(&runner, &data_dir, &data_dir)?;
    let port = start_on_free_port(&runner, &data_dir)?;
    let password = read_password(&data_dir)?;
    Ok(LocalPostgres {
        data_dir,
        port,
        bin_dir,
        password,
    })
}

// ---------------------------------------------------------------------------
// Owner-only access

/// The cluster's password; a running cluster an earlier payrail made with
/// `trust` (no [`HBA_MARKER`] in its pg_hba.conf) gets one first: a fresh
/// password is set over TCP while trust still holds, pg_hba.conf is
/// replaced by [`HBA_CONF`] and reloaded. Costs two file reads, or once per
/// old cluster two psql runs. Called under the data directory's lock.
fn secure(runner: &Runner, data_dir: &Path, port: u16) -> Result<String, EmbeddedError> {
    let hba = data_dir.join("pg_hba.conf");
    let current =
        fs::read_to_string(&hba).map_err(|e| io_err(format!("reading {}", hba.display()), e))?;
    if current.starts_with(HBA_MARKER) {
        return read_password(data_dir);
    }
    tracing::warn!(
        data_dir = %data_dir.display(),
        "local Postgres made by an earlier payrail accepts any local user (trust): setting a password and owner-only pg_hba.conf"
    );
    let password = generate_password();
    let sql = format!(
        "set password_encryption = 'scram-sha-256';\nalter role {SUPERUSER} password '{password}';\n"
    );
    psql(runner, data_dir, port, &password, &sql)?;
    write_password(data_dir, &password)?;
    write_hba(runner, data_dir)?;
    psql(
        runner,
        data_dir,
        port,
        &password,
        "select pg_reload_conf();\n",
    )?;
    Ok(password)
}

/// Runs `sql` (fed on stdin, so the password is in no command line) as the
/// superuser over TCP.
fn psql(
    runner: &Runner,
    data_dir: &Path,
    port: u16,
    password: &str,
    sql: &str,
) -> Result<(), EmbeddedError> {
    let bin = runner.bin_dir.join("psql");
    let mut cmd = Command::new(if bin.is_file() { bin } else { "psql".into() });
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        SUPERUSER,
    ])
    .args(["-p", &port.to_string(), "-d", "postgres"])
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10")
    .current_dir("/");
    let out = run_with_input(cmd, "psql", Duration::from_secs(60), Some(sql.as_bytes()))?;
    if !out.status.success() {
        return Err(EmbeddedError::Auth {
            data_dir: data_dir.to_path_buf(),
            detail: format!("psql on port {port} failed: {}", output_text(&out)),
        });
    }
    Ok(())
}

/// 32 random hex digits.
fn generate_password() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Reads `<data_dir>/payrail.password`.
fn read_password(data_dir: &Path) -> Result<String, EmbeddedError> {
    let path = data_dir.join(PASSWORD_FILE);
    match fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => Ok(p.trim().to_string()),
        Ok(_) | Err(_) => Err(EmbeddedError::Auth {
            data_dir: data_dir.to_path_buf(),
            detail: format!(
                "{} is missing or empty, and only its password opens the cluster; restore it, \
                 or move the data directory away to start afresh",
                path.display()
            ),
        }),
    }
}

/// Writes the password file, mode 0600, owned by the user running the host
/// (so the postgres user, when the host is root, cannot read it either).
fn write_password(data_dir: &Path, password: &str) -> Result<(), EmbeddedError> {
    let path = data_dir.join(PASSWORD_FILE);
    write_private(&path, password.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = sibling(path, ".tmp")?;
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| io_err(format!("writing {}", path.display()), e))
}

/// Replaces pg_hba.conf by [`HBA_CONF`] (atomically; owned by the postgres
/// user when the host is root, as the server must read it).
fn write_hba(runner: &Runner, data_dir: &Path) -> Result<(), EmbeddedError> {
    let path = data_dir.join("pg_hba.conf");
    write_private(&path, HBA_CONF.as_bytes())?;
    if runner.as_postgres {
        chown_to_postgres(&path, false)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running Postgres tools

/// Runs Postgres tools from one bin directory, as the `postgres` user when we
/// are root.
struct Runner {
    bin_dir: PathBuf,
    as_postgres: bool,
}

impl Runner {
    fn new(bin_dir: PathBuf) -> Result<Self, EmbeddedError> {
        let as_postgres = is_root();
        if as_postgres {
            check_postgres_user()?;
        }
        Ok(Runner {
            bin_dir,
            as_postgres,
        })
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin_dir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", PG_SYSTEM_USER, "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        // The postgres user may not be able to enter our working directory
        // (e.g. /root), which makes the tools print warnings.
        cmd.current_dir("/");
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Checks that `runuser` and the `postgres` system user exist.
fn check_postgres_user() -> Result<(), EmbeddedError> {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", PG_SYSTEM_USER, "--", "true"])
        .current_dir("/");
    match run(cmd, "runuser -u postgres -- true", Duration::from_secs(30)) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(EmbeddedError::Root(format!(
            "initdb and postgres refuse to run as root and `runuser -u {PG_SYSTEM_USER}` failed \
             ({}); create the system user (installing the postgresql package does) or run the \
             host as a normal user, or set DATABASE_URL",
            output_text(&out)
        ))),
        Err(EmbeddedError::Io { source, .. }) => Err(EmbeddedError::Root(format!(
            "initdb and postgres refuse to run as root and `runuser` could not be run ({source}); \
             install util-linux or run the host as a normal user, or set DATABASE_URL"
        ))),
        Err(other) => Err(other),
    }
}

/// Runs `cmd` with stdin closed and output captured, killing it after `timeout`.
fn run(cmd: Command, what: &str, timeout: Duration) -> Result<Output, EmbeddedError> {
    run_with_input(cmd, what, timeout, None)
}

/// [`run`], with `input` written to the child's stdin (then closed).
fn run_with_input(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    input: Option<&[u8]>,
) -> Result<Output, EmbeddedError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io_err(format!("running `{what}` ({})", command_line(&cmd)), e))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        let bytes = bytes.to_vec();
        // a thread, so a child that does not read cannot block us past the timeout
        thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EmbeddedError::Timeout {
                    command: command_line(&cmd),
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(io_err(format!("waiting for `{what}`"), e)),
        }
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

/// The program and its arguments (not the environment: it may hold
/// `PGPASSWORD`).
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stdout = stdout.trim();
    if !stdout.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout);
    }
    if text.is_empty() {
        text = format!("exited with {}", out.status);
    }
    text
}

// ---------------------------------------------------------------------------
// Cluster operations

/// Runs initdb into `dir` and appends our settings; `final_dir` is where the
/// cluster will live (used for the unix socket directory setting).
fn init_cluster(runner: &Runner, dir: &Path, final_dir: &Path) -> Result<(), EmbeddedError> {
    let started = Instant::now();
    create_dirs(dir, runner.as_postgres)?;
    if runner.as_postgres {
        // initdb runs as postgres and must own the (empty) directory.
        set_mode_0700(dir)?;
        chown_to_postgres(dir, true)?;
        check_postgres_can_enter(dir)?;
    }
    // initdb reads the password from a file the server's user can read;
    // it is removed right after.
    let password = generate_password();
    let pwfile = sibling(dir, ".pwfile")?;
    write_private(&pwfile, password.as_bytes())?;
    if runner.as_postgres {
        chown_to_postgres(&pwfile, false)?;
    }
    let mut cmd = runner.command("initdb");
    cmd.arg("-D")
        .arg(dir)
        .args(["-U", SUPERUSER, "-E", "UTF8"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        // The C locale exists everywhere and suits UTF8; an inherited LANG
        // naming an uninstalled locale would make initdb fail.
        .args(["--locale=C", "--no-instructions"]);
    let out = run(cmd, "initdb", COMMAND_TIMEOUT);
    let _ = fs::remove_file(&pwfile);
    let out = out?;
    if !out.status.success() {
        return Err(EmbeddedError::Initdb {
            data_dir: final_dir.to_path_buf(),
            stderr: output_text(&out),
        });
    }

    let socket_dir = final_dir.to_string_lossy();
    let socket_setting = if socket_dir.len() <= MAX_SOCKET_DIR_BYTES {
        conf_quote(&socket_dir)
    } else {
        // Too long for a unix socket path; TCP is all we use anyway.
        "''".to_string()
    };
    let settings = format!(
        "\n# Added by payrail (host/embedded-pg/src/lib.rs)\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {socket_setting}\n\
         max_connections = 200\n\
         fsync = on\n\
         synchronous_commit = on\n\
         shared_buffers = 128MB\n"
    );
    let conf = dir.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(|e| io_err(format!("appending settings to {}", conf.display()), e))?;
    write_hba(runner, dir)?;
    write_password(dir, &password)?;
    tracing::info!(
        data_dir = %final_dir.display(),
        bin_dir = %runner.bin_dir.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "initdb created a local Postgres cluster"
    );
    Ok(())
}

/// A failed `pg_ctl start`, and whether it failed because the port was taken.
struct StartFailure {
    error: EmbeddedError,
    port_taken: bool,
}

/// Starts the cluster on a free port, retrying when the port got taken
/// between picking and binding it.
fn start_on_free_port(runner: &Runner, data_dir: &Path) -> Result<u16, EmbeddedError> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match pg_ctl_start(runner, data_dir, port) {
            Ok(()) => return Ok(port),
            Err(failure) if failure.port_taken && attempt < PORT_ATTEMPTS => {
                tracing::info!(
                    port,
                    attempt,
                    "port got taken, retrying start on another port"
                );
                attempt += 1;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

fn pg_ctl_start(runner: &Runner, data_dir: &Path, port: u16) -> Result<(), StartFailure> {
    let fail = |error| StartFailure {
        error,
        port_taken: false,
    };
    let log = log_path(data_dir).map_err(fail)?;
    // Create the log outside the data dir ourselves, so the postgres user can
    // write it even when the parent directory belongs to root.
    let log_start = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|f| f.metadata())
        .map(|m| m.len())
        .map_err(|e| fail(io_err(format!("creating log file {}", log.display()), e)))?;
    if runner.as_postgres {
        chown_to_postgres(&log, false).map_err(fail)?;
    }

    let started = Instant::now();
    let wait = PG_CTL_WAIT_SECS.to_string();
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("start")
        .arg("-D")
        .arg(data_dir)
        .args(["-w", "-t", &wait, "-l"])
        .arg(&log)
        .arg("-o")
        .arg(format!("-p {port}"));
    let out = run(cmd, "pg_ctl start", COMMAND_TIMEOUT).map_err(fail)?;
    if out.status.success() {
        tracing::info!(
            data_dir = %data_dir.display(),
            port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "started local Postgres"
        );
        return Ok(());
    }
    let new_log = read_from(&log, log_start);
    let port_taken =
        new_log.contains("Address already in use") || new_log.contains("could not bind");
    let mut log_tail = tail(&new_log, LOG_TAIL_LINES);
    let pg_ctl_said = output_text(&out);
    if !pg_ctl_said.is_empty() {
        log_tail.push_str("\npg_ctl said: ");
        log_tail.push_str(&pg_ctl_said);
    }
    Err(StartFailure {
        error: EmbeddedError::Start {
            data_dir: data_dir.to_path_buf(),
            port,
            log,
            log_tail,
        },
        port_taken,
    })
}

/// `pg_ctl status`: exit 0 = running, 3 = not running, 4 = no data dir.
fn is_running(runner: &Runner, data_dir: &Path) -> Result<bool, EmbeddedError> {
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("status").arg("-D").arg(data_dir);
    let out = run(cmd, "pg_ctl status", Duration::from_secs(30))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) | Some(4) => Ok(false),
        _ => Err(EmbeddedError::Status {
            data_dir: data_dir.to_path_buf(),
            detail: output_text(&out),
        }),
    }
}

/// Removes `postmaster.pid` when the process it names is a zombie (dead but
/// not reaped, which happens when our parent chain's init does not reap, e.g.
/// a container whose PID 1 is not an init). `pg_ctl` and `postgres` treat a
/// zombie as a live postmaster, which would make `pg_ctl status` lie and
/// `pg_ctl start` refuse. A pid file naming a vanished process is left alone:
/// pg_ctl handles that itself. Returns whether a file was removed. Linux only
/// (needs /proc); elsewhere it does nothing.
fn clear_zombie_pid_file(data_dir: &Path) -> Result<bool, EmbeddedError> {
    let path = data_dir.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(false);
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Ok(false);
    };
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Ok(false);
    };
    // Format: "pid (comm) S ..."; comm may contain spaces or parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if state != Some("Z") {
        return Ok(false);
    }
    fs::remove_file(&path).map_err(|e| io_err(format!("removing stale {}", path.display()), e))?;
    tracing::info!(
        pid,
        pid_file = %path.display(),
        "removed postmaster.pid of a dead (zombie) postmaster"
    );
    Ok(true)
}

/// The port is line 4 of postmaster.pid.
fn read_pid_file_port(data_dir: &Path) -> Result<u16, EmbeddedError> {
    let path = data_dir.join("postmaster.pid");
    let text =
        fs::read_to_string(&path).map_err(|e| io_err(format!("reading {}", path.display()), e))?;
    let line = text.lines().nth(3).unwrap_or("").trim();
    line.parse().map_err(|_| EmbeddedError::PidFile {
        path,
        detail: format!("line 4 is {line:?}, expected a port number"),
    })
}

/// Waits (bounded) until 127.0.0.1:port accepts TCP connections.
fn wait_reachable(data_dir: &Path, port: u16) -> Result<(), EmbeddedError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(PG_CTL_WAIT_SECS);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::Unreachable {
                data_dir: data_dir.to_path_buf(),
                port,
                secs: PG_CTL_WAIT_SECS,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| io_err("binding 127.0.0.1:0 to find a free port".into(), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io_err("reading the address of a bound socket".into(), e))?
        .port();
    Ok(port)
}

// ---------------------------------------------------------------------------
// Finding binaries and versions

/// `$PAYRAIL_PG_BIN`, else `pg_config --bindir` (if it has initdb), else the
/// highest `/usr/lib/postgresql/*/bin` with initdb, else initdb on PATH.
fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let mut looked_in = Vec::new();
    if let Some(dir) = non_empty_env("PAYRAIL_PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_tools(&dir) {
            return Ok(dir);
        }
        // An explicit setting that is wrong is an error, not a hint to guess.
        return Err(EmbeddedError::NoPostgres {
            looked_in: format!("PAYRAIL_PG_BIN={} (no initdb/pg_ctl there)", dir.display()),
        });
    }

    looked_in.push("`pg_config --bindir`".to_string());
    let mut pg_config = Command::new("pg_config");
    pg_config.arg("--bindir").current_dir("/");
    if let Ok(out) = run(pg_config, "pg_config --bindir", Duration::from_secs(30))
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
        looked_in.push(dir.display().to_string());
    }

    looked_in.push("/usr/lib/postgresql/*/bin".to_string());
    if let Some(dir) = debian_bin_dirs().pop() {
        return Ok(dir);
    }

    looked_in.push("PATH".to_string());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(EmbeddedError::NoPostgres {
        looked_in: looked_in.join(", "),
    })
}

/// `/usr/lib/postgresql/<N>/bin` directories with the tools, ascending by N.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, dir)| dir).collect()
}

fn has_tools(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// Major version recorded in `data_dir/PG_VERSION`, if the cluster exists.
fn read_cluster_version(data_dir: &Path) -> Result<Option<String>, EmbeddedError> {
    let path = data_dir.join("PG_VERSION");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()), e)),
    }
}

/// Major version of the binaries, from `pg_ctl --version`
/// ("pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)").
fn binary_version(bin_dir: &Path) -> Result<String, EmbeddedError> {
    let mut cmd = Command::new(bin_dir.join("pg_ctl"));
    cmd.arg("--version").current_dir("/");
    let out = run(cmd, "pg_ctl --version", Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split(')')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.split('.').next())
        .unwrap_or("")
        .to_string();
    Ok(version)
}

/// Uses binaries whose major version matches an existing cluster: the found
/// ones if they match, else `/usr/lib/postgresql/<cluster version>/bin`.
fn matching_bin_dir(
    data_dir: &Path,
    bin_dir: PathBuf,
    cluster_version: &str,
) -> Result<PathBuf, EmbeddedError> {
    let found = binary_version(&bin_dir)?;
    if found == cluster_version || found.is_empty() {
        return Ok(bin_dir);
    }
    if non_empty_env("PAYRAIL_PG_BIN").is_none() {
        let same = PathBuf::from(format!("/usr/lib/postgresql/{cluster_version}/bin"));
        if has_tools(&same) {
            tracing::info!(bin_dir = %same.display(), "using binaries matching the cluster's version");
            return Ok(same);
        }
    }
    Err(EmbeddedError::VersionMismatch {
        data_dir: data_dir.to_path_buf(),
        cluster_version: cluster_version.to_string(),
        binary_version: found,
        bin_dir,
    })
}

// ---------------------------------------------------------------------------
// Files, directories, ownership

/// Takes an exclusive lock on `<data_dir>.lock` (blocks until available).
fn lock_next_to(data_dir: &Path) -> Result<File, EmbeddedError> {
    let path = sibling(data_dir, ".lock")?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(format!("opening lock file {}", path.display()), e))?;
    file.lock()
        .map_err(|e| io_err(format!("locking {}", path.display()), e))?;
    Ok(file)
}

/// The server log: next to the data directory, `<data_dir>.log`
/// (`.../payrail/postgres.log` for the default data dir).
fn log_path(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    sibling(data_dir, ".log")
}

/// `<parent>/<name><suffix>` for a path `<parent>/<name>`.
fn sibling(path: &Path, suffix: &str) -> Result<PathBuf, EmbeddedError> {
    let name = path.file_name().ok_or_else(|| {
        io_err(
            format!("{} has no final component", path.display()),
            io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let mut name = name.to_os_string();
    name.push(suffix);
    Ok(parent_of(path)?.join(name))
}

fn parent_of(path: &Path) -> Result<PathBuf, EmbeddedError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            io_err(
                format!("{} has no parent directory", path.display()),
                io::ErrorKind::InvalidInput.into(),
            )
        })
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    std::path::absolute(path).map_err(|e| io_err(format!("making {} absolute", path.display()), e))
}

/// Creates `dir` and any missing parents. As root, the directories created
/// here are handed to the postgres user with mode 0700.
fn create_dirs(dir: &Path, as_postgres: bool) -> Result<(), EmbeddedError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
    if as_postgres {
        for created in missing.iter().rev() {
            set_mode_0700(created)?;
            chown_to_postgres(created, false)?;
        }
        check_postgres_can_enter(dir)?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode_0700(path: &Path) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err(format!("chmod 0700 {}", path.display()), e))
}

#[cfg(not(unix))]
fn set_mode_0700(_path: &Path) -> Result<(), EmbeddedError> {
    Ok(())
}

fn chown_to_postgres(path: &Path, recursive: bool) -> Result<(), EmbeddedError> {
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    cmd.arg(format!("{PG_SYSTEM_USER}:")).arg(path);
    let out = run(cmd, "chown", COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(EmbeddedError::Root(format!(
            "chown {PG_SYSTEM_USER}: {} failed: {}",
            path.display(),
            output_text(&out)
        )));
    }
    Ok(())
}

/// As root: checks the postgres user can reach and write `dir`, which fails
/// when an ancestor (typically /root) is closed to other users.
fn check_postgres_can_enter(dir: &Path) -> Result<(), EmbeddedError> {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", PG_SYSTEM_USER, "--", "test", "-w"])
        .arg(dir)
        .current_dir("/");
    let out = run(cmd, "runuser test -w", Duration::from_secs(30))?;
    if out.status.success() {
        return Ok(());
    }
    Err(EmbeddedError::Root(format!(
        "the {PG_SYSTEM_USER} user, which runs the server, cannot enter or write {}; \
         one of its parent directories is closed to other users (e.g. /root). Set \
         PAYRAIL_DATA_DIR to a directory under /var/tmp, or make the parents \
         traversable (chmod o+x), or set DATABASE_URL",
        dir.display()
    )))
}

/// Whether `dir` exists and has at least one entry.
fn dir_has_entries(dir: &Path) -> Result<bool, EmbeddedError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("listing {}", dir.display()), e)),
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Small helpers

/// Effective uid 0? Reads the `Uid:` line of /proc/self/status (real,
/// effective, saved, fs), falling back to `id -u`.
fn is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
        && let Some(euid) = line.split_whitespace().nth(2)
    {
        return euid == "0";
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn io_err(context: String, source: io::Error) -> EmbeddedError {
    EmbeddedError::Io { context, source }
}

/// A single-quoted postgresql.conf string.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let pg = LocalPostgres {
            data_dir: PathBuf::from("/x"),
            port: 5555,
            bin_dir: PathBuf::from("/bin"),
            password: "pw".into(),
        };
        assert_eq!(pg.url(), "postgres://postgres:pw@127.0.0.1:5555/postgres");
        assert_eq!(
            pg.url_for("payrail test"),
            "postgres://postgres:pw@127.0.0.1:5555/payrail%20test"
        );
        assert!(
            !format!("{pg:?}").contains("pw"),
            "Debug hides the password"
        );
    }

    #[test]
    fn the_hba_conf_carries_the_marker() {
        assert!(HBA_CONF.starts_with(HBA_MARKER));
    }

    #[test]
    fn helpers() {
        assert_eq!(conf_quote("/a/b'c"), "'/a/b''c'");
        assert_eq!(tail("1\n2\n3", 2), "2\n3");
        assert_eq!(
            sibling(Path::new("/a/postgres"), ".log").unwrap(),
            Path::new("/a/postgres.log")
        );
    }
}
