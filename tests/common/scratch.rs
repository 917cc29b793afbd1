//! Scratch folders for tests, removed when they are done (shared by `common` and `toy_common`).

use std::path::{Path, PathBuf};

/// A test's scratch folder, removed when the guard drops: a test run leaves nothing in the temp dir
/// (runs used to leave hundreds of folders, some of 73 MB, until the disk filled). A test that fails
/// keeps its folder for a look (the guard drops while the thread panics), and so does every test when
/// `PREFIXSCOPE_KEEP_TEST_FILES` is set. Derefs to the folder's `Path`.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("PREFIXSCOPE_KEEP_TEST_FILES").is_some() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty folder `prefixscope-{name}-{pid}` in the system temp dir, removed when the returned
/// guard drops: bind it (`let d = temp_dir("x");`) for as long as the test uses the folder.
#[must_use = "the folder is removed when the guard drops"]
pub fn temp_dir(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("prefixscope-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    Scratch(d)
}
