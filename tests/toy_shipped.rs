//! The shipped toy files against `models/manifest.json`: each file is re-measured on the first 400 of
//! the 3,200 test samples the manifest's accuracy was measured on (same seed, so a subset) and must
//! agree within 7 points, and the paper's qualitative results must hold on them. The full measure is
//! `scripts/toy-manifest.sh` (or the `prefixscope eval` command in models/README.md).

use prefixscope::load::toy;
use prefixscope::model::gpt::PrefixTensors;
use prefixscope::model::Transformer;
use prefixscope::prefix::{Prefix, PrefixKind};
use prefixscope::train::data::Task;
use prefixscope::train::eval::{accuracy, Adapter};
use std::path::{Path, PathBuf};

const N: usize = 400;

const TOL: f64 = 0.07;

struct Entry {
    file: String,
    role: String,
    base: Option<String>,
    task: Task,
    accuracy: f64,
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(models().join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| Entry {
            file: e["file"].as_str().unwrap().to_string(),
            role: e["role"].as_str().unwrap().to_string(),
            base: e["base"].as_str().map(String::from),
            task: Task::parse(e["task"].as_str().unwrap()).unwrap(),
            accuracy: e["accuracy"].as_f64().unwrap(),
        })
        .collect()
}

/// Accuracy of an entry's model (+ adapter) on `task` over the first `n` test samples of seed 0.
fn measure(e: &Entry, task: Task, n: usize) -> f64 {
    let dir = models();
    let path = dir.join(&e.file);
    let (model, adapter, p) = match e.role.as_str() {
        "pretrained" | "finetuned" => {
            let (m, f) = toy::load_gpt(&path).unwrap();
            let p = f.prefix_size(&path).unwrap();
            (m, Adapter::default(), p)
        }
        "prefix" => {
            let (m, _) = toy::load_gpt(&dir.join(e.base.as_ref().unwrap())).unwrap();
            let pf = Prefix::load_for(&path, PrefixKind::Hidden, m.info()).unwrap();
            let p = pf.len();
            let ad = Adapter {
                prefix: Some(PrefixTensors::from_prefix(&pf).unwrap()),
                lora: None,
            };
            (m, ad, p)
        }
        "lora" => {
            let base = dir.join(e.base.as_ref().unwrap());
            let (m, f) = toy::load_gpt(&base).unwrap();
            let l = toy::load_lora(&path, m.config()).unwrap();
            let p = f.prefix_size(&base).unwrap();
            (
                m,
                Adapter {
                    prefix: None,
                    lora: Some(l),
                },
                p,
            )
        }
        r => panic!("unknown role {r}"),
    };
    let (c, total) = accuracy(&model, &adapter, p, task, n, 0).unwrap();
    c as f64 / total as f64
}

#[test]
fn shipped_files_match_the_manifest_and_the_papers_results() {
    let entries = manifest();
    assert!(!entries.is_empty());
    let find = |file: &str| entries.iter().find(|e| e.file == file);
    for e in &entries {
        // The metadata describes the file.
        let f = toy::read(&models().join(&e.file)).unwrap();
        assert_eq!(f.get(toy::TASK), Some(e.task.name()), "{}", e.file);
        let kind = f.kind().to_string();
        let want_kind = match e.role.as_str() {
            "pretrained" => "toy-gpt",
            "finetuned" => "toy-finetuned",
            "prefix" => "toy-prefix",
            _ => "toy-lora",
        };
        assert_eq!(kind, want_kind, "{}", e.file);
        // The file names its base by file name (they share a folder); the manifest by path.
        let base_name = e.base.as_deref().map(|b| b.rsplit('/').next().unwrap_or(b));
        assert_eq!(f.get(toy::BASE), base_name, "{}", e.file);
        let got = measure(e, e.task, N);
        assert!(
            (got - e.accuracy).abs() <= TOL,
            "{}: {got:.3} on {N} samples vs manifest {:.3}",
            e.file,
            e.accuracy
        );
    }
    // Paper, notebook 01: full fine-tuning learns descending, a prefix cannot.
    if let Some(e) = find("sort-1l1h/finetuned-descending.safetensors") {
        assert!(e.accuracy >= 0.80, "sorter fine-tune {}", e.accuracy);
    }
    if let Some(e) = find("sort-1l1h/prefix-descending.safetensors") {
        assert!(e.accuracy <= 0.05, "sorter prefix {}", e.accuracy);
    }
    // Notebook 02/03: each task prefix elicits its own task and no other.
    for (stem, own_min) in [("mix-1l4h256", 0.80), ("deep-4l4h128", 0.95)] {
        for t in Task::PRETRAIN {
            let Some(e) = find(&format!("{stem}/prefix-{}.safetensors", t.name())) else {
                continue;
            };
            assert!(e.accuracy >= own_min, "{}: {}", e.file, e.accuracy);
            for other in Task::PRETRAIN.into_iter().filter(|&o| o != t) {
                let a = measure(e, other, 200);
                assert!(a <= 0.05 + 0.03, "{} on {other}: {a}", e.file);
            }
        }
    }
    // Notebook 03/04: a composition of pretraining tasks is reachable, double_hist is not, LoRA is.
    if let (Some(pre), Some(e)) = (
        find("deep-4l4h128/random.safetensors"),
        find("deep-4l4h128/prefix-ascending_add1.safetensors"),
    ) {
        // "Clearly more": 10 points above the pretrained model, five times the sampling noise of a
        // 200-sample measure near 0-20%.
        let base = measure(pre, Task::AscendingAdd1, 200);
        assert!(
            e.accuracy > base + 0.10,
            "ascending_add1 prefix {} vs pretrained {base}",
            e.accuracy
        );
    }
    if let Some(e) = find("deep-4l4h128/prefix-double_hist.safetensors") {
        assert!(e.accuracy <= 0.05, "double_hist prefix {}", e.accuracy);
    }
    if let Some(e) = find("deep-4l4h128/lora1-double_hist.safetensors") {
        assert!(e.accuracy >= 0.80, "double_hist LoRA {}", e.accuracy);
    }
}
