//! Reading the app's own files back at start: `session.json` (which holds the recent list) and the
//! prefix autosave. A corrupt file never stops the app from starting: it is moved aside (renamed
//! with a `.corrupt` suffix, so it can be looked at and is not read again) and the user is told on
//! the status line.

use super::Session;
use std::path::{Path, PathBuf};

/// The largest session file read (a real one is a few kB; the prompt text is the biggest part).
pub const MAX_SESSION_BYTES: u64 = 16 << 20;
/// Recent-list entries kept from a session file.
const MAX_RECENT: usize = 64;

/// Rename `path` to `path.corrupt` (replacing an older one); the new name, or `None` if the rename
/// failed (then the file stays, and is read and refused again next time).
pub fn move_aside(path: &Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(".corrupt");
    let to = path.with_file_name(name);
    std::fs::rename(path, &to).ok().map(|()| to)
}

/// The sentence for the status line about a file moved aside.
pub fn note(path: &Path, why: &str, moved: Option<&Path>) -> String {
    let why = crate::error::clean_line(why);
    match moved {
        Some(to) => format!(
            "{} could not be read ({why}); moved aside to {} and started without it",
            path.display(),
            to.display()
        ),
        None => format!(
            "{} could not be read ({why}) and could not be moved aside; started without it",
            path.display()
        ),
    }
}

/// Parse a session file's text, and make what it holds safe to use: paths that are empty or hold a
/// NUL dropped from the recent list, the list cut to its length.
pub fn parse(text: &str) -> Result<Session, String> {
    let mut s: Session = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(m) = &mut s.models {
        m.recent.retain(|p| {
            let t = p.as_os_str();
            !t.is_empty() && !t.as_encoded_bytes().contains(&0)
        });
        m.recent.truncate(MAX_RECENT);
    }
    if s.model_path
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty() || p.as_os_str().as_encoded_bytes().contains(&0))
    {
        s.model_path = None;
    }
    Ok(s)
}

/// Read `dir/session.json`: `(session, note)`. No file: `(None, None)`. A file that cannot be read
/// or parsed: moved aside, `(None, Some(note))`.
pub fn read(path: &Path) -> (Option<Session>, Option<String>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return (None, None),
    };
    let why = if meta.len() > MAX_SESSION_BYTES {
        format!("{} bytes, more than {MAX_SESSION_BYTES}", meta.len())
    } else {
        match std::fs::read(path) {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => match parse(text) {
                    Ok(s) => return (Some(s), None),
                    Err(e) => e,
                },
                Err(e) => format!("not UTF-8: {e}"),
            },
            Err(e) => e.to_string(),
        }
    };
    let moved = move_aside(path);
    (None, Some(note(path, &why, moved.as_deref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_session_is_moved_aside_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("session.json");
        std::fs::write(&p, b"{\"model_path\": 3").unwrap();
        let (s, note) = read(&p);
        assert!(s.is_none());
        let note = note.unwrap();
        assert!(note.contains("moved aside"), "{note}");
        assert!(!p.exists() && dir.path().join("session.json.corrupt").exists());
        // Gone: the next start reads nothing and says nothing.
        assert_eq!(read(&p).1, None);
        std::fs::write(
            &p,
            br#"{"model_path": "m", "editor_token": 0, "editor_layer": 0}"#,
        )
        .unwrap();
        assert!(read(&p).0.is_some());
    }
}
