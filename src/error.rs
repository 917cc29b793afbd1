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
    /// A run produced a NaN or an infinity: refused instead of written or drawn.
    /// `at` is "layer 3" or "the output" (the logits after the last layer).
    #[error("{at}: {what}: expected finite numbers, found {found}")]
    NonFinite {
        at: String,
        what: String,
        found: String,
    },
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

    /// The message on one line (the CLI prints exactly this after "error: "): the sources joined
    /// with ": ", any backtrace a dependency attached dropped (candle adds one to its errors when
    /// `RUST_BACKTRACE` is set), control and other non-printable characters escaped, and runs of text
    /// too long to read (a corrupt name of 67 KB) cut with their length stated.
    pub fn one_line(&self) -> String {
        let mut parts = vec![match self {
            Error::Candle(e) => format!("computation failed: {}", candle_message(e)),
            other => other.to_string(),
        }];
        let mut src = std::error::Error::source(self);
        // Io's source is already in the message, and so is candle's (printed above without its
        // backtrace).
        if matches!(self, Error::Io { .. } | Error::Candle(_)) {
            src = None;
        }
        while let Some(e) = src {
            parts.push(e.to_string());
            src = e.source();
        }
        clean_line(&parts.join(": "))
    }
}

/// A candle error's message without the backtrace it carries when `RUST_BACKTRACE` is set.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => clean_line(&other.to_string()),
    }
}

/// Longest run of non-blank characters kept whole in a one-line message (a path or a name);
/// longer runs keep their first [`KEEP`] characters and state their length.
const MAX_RUN: usize = 240;
const KEEP: usize = 120;
/// The longest one-line message, in characters.
const MAX_LINE: usize = 2000;

/// `s` as one printable line: anything from a backtrace marker on dropped, line breaks and tabs
/// turned into spaces, other control or invisible characters escaped (`\u{7f}`), runs of non-blank
/// characters longer than [`MAX_RUN`] cut, and the whole kept under [`MAX_LINE`] characters.
pub fn clean_line(s: &str) -> String {
    // A backtrace that reached us as text (a dependency formatted its error with one).
    let mut s = s;
    for marker in ["\nstack backtrace:", "\n   0: ", "\nStack backtrace:"] {
        if let Some(i) = s.find(marker) {
            s = &s[..i];
        }
    }
    let mut escaped = String::with_capacity(s.len().min(1 << 20));
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => escaped.push(' '),
            c if c.is_control() || is_invisible(c) => escaped.extend(c.escape_unicode()),
            c => escaped.push(c),
        }
    }
    let mut out = String::new();
    for (i, run) in escaped.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let n = run.chars().count();
        if n > MAX_RUN {
            out.extend(run.chars().take(KEEP));
            out.push_str(&format!("\u{2026} ({n} characters)"));
        } else {
            out.push_str(run);
        }
    }
    let n = out.chars().count();
    if n > MAX_LINE {
        let cut: String = out.chars().take(MAX_LINE).collect();
        return format!("{cut}\u{2026} ({n} characters)");
    }
    out
}

/// Characters that print as nothing or move the cursor (zero-width, bidirectional overrides):
/// escaped so that a message shows what the file holds.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_cuts_and_drops_backtraces() {
        let name = format!("a\u{1b}[31m{}", "x".repeat(70_000));
        let e = Error::missing("m.safetensors", &name);
        let line = e.one_line();
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(line.contains("\\u{1b}"), "{line}");
        assert!(line.contains("characters)"), "{line}");
        assert!(line.chars().count() < 400, "{} chars", line.chars().count());
        let bt = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let line = Error::Candle(bt).one_line();
        assert_eq!(line, "computation failed: shape mismatch");
        let line = Error::format("f", "x", "y", "bad\n   0: std::rt::lang_start\n").one_line();
        assert_eq!(line, "f: x: expected y, found bad");
    }
}
