//! The last resort at the loader boundary: a panic inside a dependency (or our own code) while a
//! file is read becomes the usual one-line error naming the file.
//!
//! Inputs that a dependency is known to panic on are refused before the call (see
//! [`super::gguf_check`], [`super::tokenizer_check`], [`crate::arrays`]); this catches what those
//! checks cannot know about. The default panic message (and backtrace) is suppressed for the
//! guarded call only: a panic hook installed once forwards to the previous hook unless the
//! panicking thread is inside [`catch`].

use crate::error::{Error, Result};
use std::cell::Cell;
use std::path::Path;
use std::sync::Once;

thread_local! {
    /// Depth of guarded calls on this thread (their panics are reported as errors, not printed).
    static GUARDED: Cell<usize> = const { Cell::new(0) };
    /// The message of the last panic caught on this thread.
    static LAST: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) > 0 {
                let msg = payload_text(info.payload());
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST.with(|l| *l.borrow_mut() = format!("{msg}{at}"));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// Run `f` (which reads `path`); a panic inside it becomes an error naming `path` and what was being
/// read (`what`: "checkpoint", "prefix file", ...).
pub fn catch<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    GUARDED.with(|g| g.set(g.get() + 1));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    match out {
        Ok(r) => r,
        Err(_) => {
            let msg = LAST.with(|l| std::mem::take(&mut *l.borrow_mut()));
            Err(Error::format(
                path,
                what,
                "input the readers handle",
                format!("an internal failure ({msg}); please report this input"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_file() {
        let r: Result<()> = catch(Path::new("bad.gguf"), "checkpoint", || {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            let _ = v[i];
            Ok(())
        });
        let e = r.unwrap_err().one_line();
        assert!(e.starts_with("bad.gguf: checkpoint:"), "{e}");
        assert!(e.contains("index out of bounds"), "{e}");
        // Nested and later calls still work.
        let ok: Result<u8> = catch(Path::new("x"), "y", || Ok(3));
        assert_eq!(ok.unwrap(), 3);
    }
}
