//! The plugin tools' error type.

use payrail_engine::LoadError;
use payrail_engine::signing::SigningError;

/// What can go wrong in a plugin tool. Each variant has a stable
/// [`code`](ToolError::code); the host maps each to its own error variant
/// of the same meaning (`Invalid`, `AlreadyExists`, `PluginLoad`, `Setup`).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A bad argument or file: unreadable, too large, not a fixture, a
    /// plugin that faults where a call must succeed, ...
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// What would be created is already there (never overwritten).
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// The plugin is refused as a deploy would refuse it.
    #[error("plugin rejected: {0}")]
    PluginLoad(#[from] LoadError),
    /// The wasm engine could not be created.
    #[error("setup error: {0}")]
    Setup(String),
}

impl ToolError {
    /// Stable code for scripts and logs.
    pub fn code(&self) -> &str {
        match self {
            ToolError::Invalid { code, .. } => code,
            ToolError::AlreadyExists { .. } => "already_exists",
            ToolError::PluginLoad(_) => "plugin_invalid",
            ToolError::Setup(_) => "engine_setup",
        }
    }

    /// Shorthand for [`ToolError::Invalid`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ToolError::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl From<SigningError> for ToolError {
    fn from(e: SigningError) -> ToolError {
        ToolError::Invalid {
            code: e.code,
            message: e.message,
        }
    }
}

/// Result alias of the plugin tools.
pub type Result<T, E = ToolError> = std::result::Result<T, E>;
