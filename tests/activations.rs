//! The one activation vocabulary (`prefixscope::hooks`, docs/activations.md): what `attention`
//! writes, that a 0.1 file (old names) is still read, and that an unknown name is refused.

mod common;

use common::{repo_path, run_bin, temp_dir};
use prefixscope::arrays::{read_arrays, write_arrays, Array};
use prefixscope::hooks::{Activations, Hook};
use std::path::{Path, PathBuf};

fn peft(rel: &str) -> PathBuf {
    repo_path("tests/fixtures/peft").join(rel)
}

fn ids() -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft("prompt.json")).unwrap()).unwrap();
    let ids: Vec<String> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap().to_string())
        .collect();
    ids.join(",")
}

/// `attention` on the 2-layer PEFT fixture model, with `extra` prefix flags, into `out`.
fn attention(out: &Path, extra: &[&str]) {
    let model = peft("tiny-llama");
    let ids = ids();
    let mut args = vec![
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run_bin(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
}

fn sorted_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = match out.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
            v.as_object().unwrap().keys().cloned().collect()
        }
        _ => read_arrays(out).unwrap().into_keys().collect(),
    };
    names.sort();
    names
}

/// The names are written out here, not produced by the function under test: renaming a hook
/// must fail this test (and so be a decision, recorded in docs/activations.md).
#[test]
fn attention_writes_exactly_the_documented_names() {
    let dir = temp_dir("activations-names");
    let soft = peft("ours/tiny-llama/soft_prompt.npy");
    let with_prefix = [
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_pattern_pretrained",
        "blocks.0.attn.hook_pattern_renormalized",
        "blocks.0.attn.hook_prefix_mass",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_pattern_pretrained",
        "blocks.1.attn.hook_pattern_renormalized",
        "blocks.1.attn.hook_prefix_mass",
        "logits_last_prefixed",
        "logits_last_pretrained",
        "token_ids",
    ];
    let without = [
        "blocks.0.attn.hook_pattern_pretrained",
        "blocks.1.attn.hook_pattern_pretrained",
        "logits_last_pretrained",
        "token_ids",
    ];
    for ext in ["npz", "json"] {
        let out = dir.join(format!("with.{ext}"));
        attention(&out, &["--soft-prompt", soft.to_str().unwrap()]);
        assert_eq!(sorted_names(&out), with_prefix, "{ext} with a prefix");
        let out = dir.join(format!("without.{ext}"));
        attention(&out, &[]);
        assert_eq!(sorted_names(&out), without, "{ext} without a prefix");
    }
    // Shapes as documented: H = 4, N = 8, P = 2.
    let a = read_arrays(&dir.join("with.npz")).unwrap();
    for (name, shape) in [
        ("blocks.1.attn.hook_pattern", vec![4, 8, 10]),
        ("blocks.1.attn.hook_pattern_renormalized", vec![4, 8, 8]),
        ("blocks.1.attn.hook_pattern_pretrained", vec![4, 8, 8]),
        ("blocks.1.attn.hook_prefix_mass", vec![4, 8]),
        ("token_ids", vec![8]),
    ] {
        assert_eq!(a[name].shape, shape, "{name}");
    }
}

/// `tests/fixtures/peft/ours/*/soft_prompt.attention.npz` was written by 0.1 (`with_prefix_L{l}`,
/// ...): it still reads, under the new names, with one deprecation note, and holds the numbers a
/// fresh export writes under the new names.
#[test]
fn a_file_with_the_old_names_is_still_read() {
    let old = peft("ours/tiny-llama/soft_prompt.attention.npz");
    let raw = read_arrays(&old).unwrap();
    assert!(
        raw.contains_key("with_prefix_L1"),
        "the fixture is a 0.1 file"
    );
    let read = Activations::read(&old).unwrap();
    assert_eq!(read.len(), raw.len());
    let mut renamed = read.renamed.clone();
    renamed.sort();
    assert_eq!(
        renamed[..4],
        [
            (
                "prefix_mass_L0".into(),
                "blocks.0.attn.hook_prefix_mass".into()
            ),
            (
                "prefix_mass_L1".into(),
                "blocks.1.attn.hook_prefix_mass".into()
            ),
            (
                "pretrained_L0".into(),
                "blocks.0.attn.hook_pattern_pretrained".into()
            ),
            (
                "pretrained_L1".into(),
                "blocks.1.attn.hook_pattern_pretrained".into()
            ),
        ] as [(String, String); 4]
    );
    assert_eq!(read.renamed.len(), 8, "four hooks at two layers");
    let note = read.deprecation_note(&old).unwrap();
    assert!(
        note.contains(&old.display().to_string())
            && note.contains("0.1")
            && note.contains("docs/activations.md")
            && !note.contains('\n'),
        "{note}"
    );
    assert_eq!(
        read.get(Hook::Pattern, 1).unwrap(),
        &raw["with_prefix_L1"],
        "the old array, unchanged, under its new name"
    );
    assert_eq!(read.layers(Hook::PrefixMass), vec![0, 1]);

    let dir = temp_dir("activations-old");
    let out = dir.join("now.npz");
    let soft = peft("ours/tiny-llama/soft_prompt.npy");
    attention(&out, &["--soft-prompt", soft.to_str().unwrap()]);
    let now = read_arrays(&out).unwrap();
    for (old_name, new_name) in [
        ("with_prefix_L0", "blocks.0.attn.hook_pattern"),
        ("renormalized_L1", "blocks.1.attn.hook_pattern_renormalized"),
        ("pretrained_L1", "blocks.1.attn.hook_pattern_pretrained"),
        ("prefix_mass_L0", "blocks.0.attn.hook_prefix_mass"),
    ] {
        let (a, b) = (&raw[old_name], &now[new_name]);
        assert_eq!(a.shape, b.shape, "{old_name}");
        let d = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-6, "{old_name} -> {new_name}: {d:e}");
        // Either spelling finds the same array in a current file.
        assert_eq!(
            Activations::from_named(&out, now.clone())
                .unwrap()
                .by_name(old_name),
            Some(b)
        );
    }
}

fn write(path: &Path, arrays: &[(&str, Array)]) {
    let refs: Vec<(&str, &Array)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    write_arrays(path, &refs).unwrap();
}

/// An unknown name, a name spelt both ways, or a wrong rank: one line naming the file and the array.
#[test]
fn unknown_names_are_refused_in_one_line() {
    let dir = temp_dir("activations-bad");
    let ids = Array::zeros(&[3]);
    let cube = Array::zeros(&[2, 3, 3]);
    for (file, arrays, needles) in [
        (
            "unknown.npz",
            vec![("token_ids", ids.clone()), ("attn_L3", cube.clone())],
            vec![
                "array 'attn_L3'",
                "blocks.{l}.attn.hook_pattern",
                "found 'attn_L3'",
            ],
        ),
        (
            "near-miss.npz",
            vec![("blocks.3.attn.pattern", cube.clone())],
            vec!["array 'blocks.3.attn.pattern'", "docs/activations.md"],
        ),
        (
            "twice.npz",
            vec![
                ("pretrained_L0", cube.clone()),
                ("blocks.0.attn.hook_pattern_pretrained", cube.clone()),
            ],
            vec!["blocks.0.attn.hook_pattern_pretrained", "not both"],
        ),
        (
            "rank.npz",
            vec![("prefix_mass_L2", cube.clone())],
            vec!["array 'prefix_mass_L2'", "2 dimensions (H, N)", "[2, 3, 3]"],
        ),
    ] {
        let path = dir.join(file);
        write(&path, &arrays);
        let e = Activations::read(&path).unwrap_err().one_line();
        assert!(e.contains(&path.display().to_string()), "{e}");
        for n in needles {
            assert!(e.contains(n), "{file}: '{n}' not in: {e}");
        }
        assert!(!e.contains('\n'), "{e}");
    }
}
