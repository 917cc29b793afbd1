//! One error type for everything a user can hand us. Every message names the file, tensor or field and
//! says what was expected against what was found, so a user can fix their input without reading code.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not what it claims to be (bad magic, truncated, bad header).
    #[error("{path}: {what}: expected {expected}, found {found}")]
    Format {
        path: PathBuf,
        what: String,
        expected: String,
        found: String,
    },
    #[error("{path}: missing tensor '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found}, expected {expected}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("{path}: unsupported {what}: {found} (supported: {supported})")]
    Unsupported {
        path: PathBuf,
        what: String,
        found: String,
        supported: String,
    },
    /// Bad value from the command line or the GUI (prompt, token ids, layer list, ...).
    #[error("{field}: expected {expected}, found {found}")]
    Input {
        field: String,
        expected: String,
        found: String,
    },
    #[error("computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cancelled")]
    Cancelled,
    /// A broken invariant of ours, reported instead of a panic.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub fn shape(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        expected: impl std::fmt::Debug,
        found: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }

    pub fn input(
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Error::Input {
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub fn missing(path: impl AsRef<Path>, tensor: impl Into<String>) -> Self {
        Error::MissingTensor {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
        }
    }

    pub fn unsupported(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        found: impl Into<String>,
        supported: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            found: found.into(),
            supported: supported.into(),
        }
    }

    /// The message on one line (the CLI prints exactly this after "error: ").
    pub fn one_line(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        // Io's source is already in the message; other sources are not.
        if matches!(self, Error::Io { .. }) {
            src = None;
        }
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s.replace('\n', " ")
    }
}
