//! Account locks as `flock` on files of one directory, for hosts on one
//! machine (issue 22; docs/locking.md, "Which lock should a payment system
//! use?").
//!
//! - Accounts map to a bounded set of lock files (`slots`, by the account's
//!   lock key), taken in ascending slot order: two callers never wait for
//!   each other in a cycle. Two accounts may share a slot; they then
//!   serialize together, which costs waiting, never correctness.
//! - The kernel releases a lock when its file is closed, so a killed holder
//!   holds nothing: no lifetime to wait out, unlike Redis.
//! - Each file's first 8 bytes count its acquisitions; the count, read and
//!   written under the lock, is the fencing token of every account of that
//!   slot, and it survives restarts of the hosts (a wiped directory is
//!   repaired by [`FileLocks::raise_fences`]).
//! - Waiting is bounded: non-blocking attempts back off from 1 ms to 50 ms
//!   until `wait`, then [`LockError::Timeout`].
//!
//! Costs: per slot an `open`, a `flock`, a read and a write of 8 bytes,
//! and a `close` on release; these are local system calls of microseconds,
//! made on the calling task.

use super::{Fence, LockError, backoff};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most lock files a directory is split into.
pub const MAX_SLOTS: u32 = 65_536;

/// Locks held by one caller: released when dropped (the files close).
#[derive(Debug)]
pub struct FileHeld {
    _files: Vec<File>,
    /// One per account, in key order.
    pub fences: Vec<Fence>,
}

/// The file lock service of one host.
#[derive(Debug, Clone)]
pub struct FileLocks {
    dir: PathBuf,
    slots: u32,
    wait: Duration,
    /// `flock` attempts since start.
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> LockError {
    LockError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl FileLocks {
    /// Locks in `dir` (created owner-only if missing), split into `slots`
    /// files; a caller waits at most `wait` for locks held elsewhere.
    pub fn new(dir: &Path, slots: u32, wait: Duration) -> Result<FileLocks, LockError> {
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(LockError::Unavailable(format!(
                "{slots} lock files: use 1 to {MAX_SLOTS}"
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("create", dir, e))?;
        Ok(FileLocks {
            dir: dir.to_path_buf(),
            slots,
            wait,
            calls: Default::default(),
        })
    }

    /// `flock` attempts since start (one per lock file taken, more when
    /// one was held elsewhere).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn slot(&self, key: i64) -> u32 {
        (key as u64 % u64::from(self.slots)) as u32
    }

    /// The lock file of account lock key `key`.
    pub fn path_of(&self, key: i64) -> PathBuf {
        self.dir.join(format!("slot-{:05}.lock", self.slot(key)))
    }

    fn open(&self, path: &Path) -> Result<File, LockError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("open", path, e))
    }

    /// Takes the lock of every slot of `sorted_keys`
    /// ([`super::sorted_keys`]) in slot order, waiting at most the wait
    /// bound for slots held elsewhere; on a timeout nothing stays held.
    pub async fn acquire(&self, sorted_keys: &[i64]) -> Result<FileHeld, LockError> {
        let mut slots: Vec<u32> = sorted_keys.iter().map(|&k| self.slot(k)).collect();
        slots.sort_unstable();
        slots.dedup();
        let deadline = Instant::now() + self.wait;
        let mut files = Vec::with_capacity(slots.len());
        let mut tokens = Vec::with_capacity(slots.len());
        for &slot in &slots {
            let path = self.dir.join(format!("slot-{slot:05}.lock"));
            let file = self.open(&path)?;
            self.lock(&file, &path, deadline).await?;
            tokens.push(bump(&file, &path)?);
            files.push(file);
        }
        let fences = sorted_keys
            .iter()
            .map(|&key| {
                let i = slots
                    .binary_search(&self.slot(key))
                    .expect("every key's slot was locked");
                Fence {
                    key,
                    token: tokens[i],
                }
            })
            .collect();
        Ok(FileHeld {
            _files: files,
            fences,
        })
    }

    async fn lock(&self, file: &File, path: &Path, deadline: Instant) -> Result<(), LockError> {
        use rustix::fs::{FlockOperation, flock};
        let mut attempt = 0u32;
        loop {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match flock(file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(()),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
                Err(e) => return Err(io("flock", path, e.into())),
            }
            let pause = backoff(attempt);
            if Instant::now() + pause > deadline {
                return Err(LockError::Timeout);
            }
            tokio::time::sleep(pause).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Raises the counters of the slots of `fences` to at least their
    /// tokens (after the directory was lost). Takes each slot's lock.
    pub async fn raise_fences(&self, fences: &[Fence]) -> Result<(), LockError> {
        for f in fences {
            let path = self.path_of(f.key);
            let file = self.open(&path)?;
            self.lock(&file, &path, Instant::now() + self.wait).await?;
            if read_count(&file, &path)? < f.token {
                write_count(&file, &path, f.token)?;
            }
        }
        Ok(())
    }
}

fn read_count(file: &File, path: &Path) -> Result<i64, LockError> {
    let mut buf = [0u8; 8];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => Ok(i64::from_le_bytes(buf)),
        // a new file: no acquisition yet
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(io("read", path, e)),
    }
}

fn write_count(file: &File, path: &Path, count: i64) -> Result<(), LockError> {
    file.write_all_at(&count.to_le_bytes(), 0)
        .map_err(|e| io("write", path, e))
}

/// The slot's next fencing token, written back under its lock.
fn bump(file: &File, path: &Path) -> Result<i64, LockError> {
    let next = read_count(file, path)?
        .checked_add(1)
        .ok_or_else(|| LockError::Unavailable(format!("{}: counter at its end", path.display())))?;
    write_count(file, path, next)?;
    Ok(next)
}
