//! The image store's errors: each says what failed and on which file, digest or reference.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{path}: not an image archive or OCI layout (no index.json or manifest.json)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: no image for this node's platform ({platform})")]
    NoMatchingPlatform { path: PathBuf, platform: String },
    #[error("image {reference:?} not found")]
    NotFound { reference: String },
    #[error("image reference {reference:?} is ambiguous: {candidates:?}")]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("layer {diff_id} of image {image}: {source}")]
    Layer {
        image: String,
        diff_id: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("pull {reference}: {reason}")]
    Pull { reference: String, reason: String },
    #[error("mount overlay at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl ToString) -> ImageError {
        ImageError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// An error and its causes on one line: some errors (reqwest's "error sending request",
/// tar's "failed to unpack") keep what failed (the TLS alert, the errno) in their sources.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
