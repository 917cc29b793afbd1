//! The toy models bundled in `models/`: where they are found, and which one opens first.
//!
//! Library logic (the app, `bench` and the tests all need it), so it lives here and not in the window.

use std::path::{Path, PathBuf};

/// The bundled default: the toy 1-layer sorter pretrained on `ascending` and its trained `descending`
/// prefix (the paper's per-layer form). Found through `models/manifest.json` (the pretrained
/// `ascending` entry with "1l1h" in its name, and the prefix whose base it is), else by these names.
pub const DEFAULT_MODEL: &str = "models/sort-1l1h/ascending.safetensors";
pub const DEFAULT_PREFIX: &str = "models/sort-1l1h/prefix-descending.safetensors";

/// Folders that may hold the bundled `models/`: beside the executable (and its parents, for
/// `target/*/`), then the crate this binary was built from.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            dirs.push(dir.join("models"));
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

/// The default model and its prefix, if bundled: `(model, Some(prefix))`.
pub fn default_model() -> Option<(PathBuf, Option<PathBuf>)> {
    for dir in model_dirs() {
        if let Some(found) = from_manifest(&dir) {
            return Some(found);
        }
        let base = dir.parent().unwrap_or(&dir);
        let model = base.join(DEFAULT_MODEL);
        if model.exists() {
            let prefix = base.join(DEFAULT_PREFIX);
            return Some((model, prefix.exists().then_some(prefix)));
        }
    }
    None
}

/// The largest bundled toy: the 4-layer model when it is there, else the default sorter.
pub fn largest_toy() -> Option<PathBuf> {
    let (sorter, _) = default_model()?;
    let deep = sorter
        .parent()?
        .parent()?
        .join("deep-4l4h128/random.safetensors");
    Some(if deep.exists() { deep } else { sorter })
}

fn from_manifest(dir: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let entries = json.as_array().or_else(|| json.get("models")?.as_array())?;
    let field =
        |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let model = entries.iter().find_map(|e| {
        let file = field(e, "file")?;
        (field(e, "role").as_deref() == Some("pretrained")
            && field(e, "task").as_deref() == Some("ascending")
            && file.contains("1l1h"))
        .then_some(file)
    })?;
    let prefix = entries.iter().find_map(|e| {
        (field(e, "role").as_deref() == Some("prefix")
            && field(e, "base").as_deref() == Some(model.as_str()))
        .then(|| field(e, "file"))
        .flatten()
    });
    let model_path = dir.join(&model);
    if !model_path.exists() {
        return None;
    }
    let prefix_path = prefix.map(|p| dir.join(p)).filter(|p| p.exists());
    Some((model_path, prefix_path))
}
