//! Finding the shipped toy models and their adapters by their safetensors metadata
//! (`prefixscope.kind`, `.task`, `.base`, `.config`), for the paper's figures.

use super::TASKS;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One of our safetensors files with its metadata.
#[derive(Debug, Clone)]
pub struct ToyEntry {
    pub path: PathBuf,
    pub meta: BTreeMap<String, String>,
}

impl ToyEntry {
    pub fn kind(&self) -> &str {
        self.get("prefixscope.kind").unwrap_or("")
    }
    pub fn task(&self) -> &str {
        self.get("prefixscope.task").unwrap_or("")
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.meta.get(k).map(|s| s.as_str())
    }
    /// `(n_layer, n_head, n_embd)` from the JSON config.
    pub fn shape(&self) -> Option<(usize, usize, usize)> {
        let v: serde_json::Value = serde_json::from_str(self.get("prefixscope.config")?).ok()?;
        let g = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        Some((g("n_layer")?, g("n_head")?, g("n_embd")?))
    }
    /// Whether `self` names `base` as its base model.
    pub fn based_on(&self, base: &ToyEntry) -> bool {
        let Some(b) = self.get("prefixscope.base") else {
            return false;
        };
        // The metadata names the base by file name, in the adapter's own folder: two models called
        // `random.safetensors` in different folders are different bases.
        let bname = Path::new(b).file_name();
        bname.is_some()
            && bname == base.path.file_name()
            && self.path.parent() == base.path.parent()
    }
}

/// Read a safetensors header's `__metadata__` without reading the tensors.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::format(
            path,
            "safetensors header",
            "a header under 100 MB",
            format!("{n} bytes"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&buf)
        .map_err(|e| Error::format(path, "safetensors header", "JSON", e.to_string()))?;
    let mut out = BTreeMap::new();
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

/// Every toy file in `dir`: those `manifest.json` names (any string ending in `.safetensors`) and
/// those in the folder itself.
pub fn scan_models(dir: &Path) -> Result<Vec<ToyEntry>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let manifest = dir.join("manifest.json");
    if manifest.exists() {
        let text = std::fs::read_to_string(&manifest).map_err(|e| Error::io(&manifest, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&manifest, "manifest", "JSON", e.to_string()))?;
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) if s.ends_with(".safetensors") => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut names = Vec::new();
        walk(&v, &mut names);
        for n in names {
            let p = if Path::new(&n).is_absolute() {
                PathBuf::from(&n)
            } else {
                // Paths may be relative to the manifest or to the repository root.
                let a = dir.join(&n);
                let b = dir.parent().unwrap_or(dir).join(&n);
                if a.exists() {
                    a
                } else {
                    b
                }
            };
            if p.exists() {
                paths.push(p);
            }
        }
    }
    // The folder and its subfolders (one level: models/<family>/<file>).
    if dir.is_dir() {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Ok(sub) = std::fs::read_dir(&p) {
                    paths.extend(
                        sub.flatten()
                            .map(|e| e.path())
                            .filter(|q| crate::arrays::extension(q) == "safetensors"),
                    );
                }
            } else if crate::arrays::extension(&p) == "safetensors" {
                paths.push(p);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        let key = std::fs::canonicalize(&p).unwrap_or(p.clone());
        if !seen.insert(key) {
            continue;
        }
        if let Ok(meta) = read_metadata(&p) {
            if meta.contains_key("prefixscope.kind") {
                out.push(ToyEntry { path: p, meta });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The files figure (a) needs.
pub struct SorterFiles {
    pub pretrained: ToyEntry,
    pub finetuned: ToyEntry,
    pub prefix: ToyEntry,
}

/// The files figures (b) and (c) need.
pub struct FourTaskFiles {
    pub model: ToyEntry,
    /// `(task, prefix file)` in [`TASKS`] order.
    pub prefixes: Vec<(String, ToyEntry)>,
}

fn describe_missing(what: &str, dir: &Path) -> Error {
    Error::input(
        format!("{} (models)", dir.display()),
        format!("a {what}"),
        "none (train it, or merge main once it ships)",
    )
}

/// The pretrained toy (`toy-gpt`) with `layers` layers and `heads` heads pretrained on `task`.
fn find_pretrained<'a>(
    dir: &Path,
    all: &'a [ToyEntry],
    task: &str,
    (layers, heads): (usize, usize),
    name: &str,
) -> Result<&'a ToyEntry> {
    all.iter()
        .find(|e| {
            e.kind() == "toy-gpt"
                && e.task() == task
                && e.shape().is_some_and(|(l, h, _)| l == layers && h == heads)
        })
        .ok_or_else(|| {
            let s = |n: usize| if n == 1 { "" } else { "s" };
            describe_missing(
                &format!(
                    "toy-gpt model with {layers} layer{}, {heads} head{}, task {task} ({name})",
                    s(layers),
                    s(heads)
                ),
                dir,
            )
        })
}

/// The adapter file of `kind` (`toy-prefix`, `toy-finetuned`) for `task` trained on `base`.
fn find_adapter<'a>(
    dir: &Path,
    all: &'a [ToyEntry],
    kind: &str,
    task: &str,
    base: &ToyEntry,
) -> Result<&'a ToyEntry> {
    all.iter()
        .find(|e| e.kind() == kind && e.task() == task && e.based_on(base))
        .ok_or_else(|| {
            describe_missing(
                &format!("{kind} on {task} based on {}", base.path.display()),
                dir,
            )
        })
}

/// The 1-layer 1-head sorter pretrained on ascending, its full fine-tune and its prefix (descending).
pub fn find_sorter(dir: &Path, all: &[ToyEntry]) -> Result<SorterFiles> {
    let pretrained = find_pretrained(dir, all, "ascending", (1, 1), "the sorter")?;
    Ok(SorterFiles {
        pretrained: pretrained.clone(),
        finetuned: find_adapter(dir, all, "toy-finetuned", "descending", pretrained)?.clone(),
        prefix: find_adapter(dir, all, "toy-prefix", "descending", pretrained)?.clone(),
    })
}

/// The 1-layer 4-head model pretrained on the random mix of tasks and its four task prefixes.
pub fn find_four_task(dir: &Path, all: &[ToyEntry]) -> Result<FourTaskFiles> {
    let model = find_pretrained(dir, all, "random", (1, 4), "the four-task model")?;
    let prefixes = TASKS
        .iter()
        .map(|t| {
            Ok((
                t.to_string(),
                find_adapter(dir, all, "toy-prefix", t, model)?.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    Ok(FourTaskFiles {
        model: model.clone(),
        prefixes,
    })
}
