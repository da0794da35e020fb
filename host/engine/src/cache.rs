//! On-disk cache of compiled plugin artifacts, so a restart does not
//! recompile every deployed plugin.
//!
//! An entry is keyed by sha256(plugin digest, the engine's
//! `precompile_compatibility_hash`): another wasmtime build or engine
//! configuration gets other keys, never a stale artifact. Each entry is two
//! files written by this host: `<key>.cwasm` (the `Component::serialize`
//! output) and `<key>.sha256` (the sha256 of those bytes, computed when they
//! were written). A read deserializes only when the artifact's sha256 equals
//! the recorded one; anything else (missing, partial, corrupt, foreign
//! file) is a miss and the plugin is compiled from its bytes again.
//!
//! Trust boundary: the directory is created owner-only (0700) and must be
//! writable by the host's user alone: whoever can write both files there
//! can run native code in the host, exactly like whoever can replace the
//! host binary.

use sha2::{Digest as _, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Largest artifact read back (compiled plugins are a few MB at most).
const MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;

/// A `Hasher` feeding sha256, to turn wasmtime's compatibility `Hash` into
/// stable bytes (std's `DefaultHasher` may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }
}

/// The artifact cache of one engine.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// Hex sha256 of the engine's compatibility hash.
    compat: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` atomically (temporary file + rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Refuses `dir` unless this process's user owns it and no one else may
/// write to it: whoever can write there can make the host map their bytes
/// as code. Checked before anything is read from it.
#[cfg(unix)]
fn check_owner_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "artifact cache directory {} {why}; use a directory of this user's, mode 0700",
                dir.display()
            ),
        ))
    };
    if !meta.is_dir() {
        return refuse("is not a directory".into());
    }
    if meta.uid() != me {
        return refuse(format!(
            "is owned by uid {}, not this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "is writable by its group or others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

impl ArtifactCache {
    /// Opens (creating it owner-only) the cache directory for `engine`.
    /// Refuses a directory another user owns or may write to
    /// ([`check_owner_only`]).
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            check_owner_only(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir)?;
        let mut h = Sha256Hasher(Sha256::new());
        h.write(b"payrail/artifact/v1\0");
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            compat: hex::encode(h.0.finalize()),
        })
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let key = sha256_hex(format!("{digest}\0{}", self.compat).as_bytes());
        (
            self.dir.join(format!("{key}.cwasm")),
            self.dir.join(format!("{key}.sha256")),
        )
    }

    /// The cached component of `digest`, if this host wrote a valid one.
    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let (artifact_path, sum_path) = self.paths(digest);
        let recorded = std::fs::read_to_string(&sum_path).ok()?;
        let meta = std::fs::metadata(&artifact_path).ok()?;
        if meta.len() > MAX_ARTIFACT_BYTES {
            return None;
        }
        let artifact = std::fs::read(&artifact_path).ok()?;
        if sha256_hex(&artifact) != recorded.trim() {
            tracing::warn!(path = %artifact_path.display(), "cached plugin artifact does not match its recorded sha256; recompiling");
            return None;
        }
        // SAFETY: `Component::deserialize` trusts its input to be a
        // wasmtime artifact (it maps it as executable code). These bytes
        // were produced by `Component::serialize` in this host (`put`), for
        // an engine with the same compatibility hash (it is part of the
        // file name), and are byte-for-byte what was written: their sha256
        // equals the one recorded at write time. wasmtime additionally
        // checks the artifact's header against this engine and refuses a
        // mismatch with an error (then we recompile).
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &artifact) };
        match component {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cached plugin artifact refused by wasmtime; recompiling");
                None
            }
        }
    }

    /// Stores the compiled `component` of `digest`. Failures are logged
    /// and ignored (the cache is an optimisation).
    pub(crate) fn put(&self, digest: &str, component: &Component) {
        let (artifact_path, sum_path) = self.paths(digest);
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|artifact| {
                write_atomic(&artifact_path, &artifact)?;
                // the sum last: a reader never sees a sum without its file
                write_atomic(&sum_path, sha256_hex(&artifact).as_bytes())
            });
        if let Err(e) = result {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot write plugin artifact cache");
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("payrail-cache-{tag}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_a_directory_others_can_write() {
        let d = temp_dir("ww");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_owner_only(&d).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains("writable by its group or others"),
            "{err}"
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_owner_only(&d).expect("owner-only is accepted");
        let engine = Engine::default();
        ArtifactCache::open(&d.join("nested/new"), &engine).expect("created owner-only");
        let mode = std::fs::metadata(d.join("nested/new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_directory_of_another_user() {
        // `/` is root's: another user's directory for anyone but root
        if rustix::process::geteuid().is_root() {
            // as root, a directory chowned to nobody stands in for it
            let d = temp_dir("other");
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let err = check_owner_only(&d).unwrap_err();
            assert!(err.to_string().contains("is owned by uid 65534"), "{err}");
            std::fs::remove_dir_all(&d).unwrap();
        } else {
            let err = check_owner_only(Path::new("/")).unwrap_err();
            assert!(err.to_string().contains("is owned by uid 0"), "{err}");
        }
    }
}
