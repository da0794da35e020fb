//! `payrail plugin keygen` and `payrail plugin sign`: optional plugin
//! signatures.

use crate::fixture::read;
use crate::{Result, ToolError};
use payrail_engine::{digest_of, signing};
use std::path::Path;

/// Creates a new key pair: the secret key goes to `out` (owner-only, never
/// overwritten); returns the public key (hex) for the hosts' trusted keys.
pub fn keygen(out: &Path) -> Result<String> {
    use std::io::Write;
    let (secret, public) = signing::keygen();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).map_err(|e| {
        ToolError::invalid(
            "unwritable_file",
            format!("cannot create {}: {e}", out.display()),
        )
    })?;
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| ToolError::invalid("unwritable_file", format!("{}: {e}", out.display())))?;
    Ok(public)
}

/// Signs the digest of `wasm` with the secret key in `key`; returns
/// (digest, signature hex).
pub fn sign(wasm: &Path, key: &Path) -> Result<(String, String)> {
    let bytes = read(wasm, 256 * 1024 * 1024)?;
    let secret = String::from_utf8(read(key, 1024)?)
        .map_err(|_| ToolError::invalid("invalid_key", "the key file is not text"))?;
    let digest = digest_of(&bytes);
    let sig = signing::sign(secret.trim(), &digest)?;
    Ok((digest, sig))
}
