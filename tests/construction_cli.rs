//! `prefixscope construct` and `prefixscope capacity` from the outside: output, files, exit status.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefixscope"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = bin().args(args).output().expect("run prefixscope");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn construct_json_target() {
    let (rc, out, err) = run(&["construct", "--target", "I love transformers!", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["target"], "I love transformers!");
    assert_eq!(v["generated"], "I love transformers!");
    let m = v["margin"].as_f64().unwrap();
    assert!(m > 0.0 && m <= 0.5 / 94.0, "margin {m}");
    // The virtual token is the packed string: 'I' = 73 - 32 = 41, then space = 0.
    let vt = &v["virtual_tokens"][0];
    assert!((vt[0].as_f64().unwrap() - 41.0 / 94.0).abs() < 1e-7);
    assert_eq!(vt[1].as_f64().unwrap(), 0.0);
}

#[test]
fn construct_text_output() {
    let (rc, out, _) = run(&["construct", "--target", "I love transformers!"]);
    assert_eq!(rc, 0);
    assert!(out.contains("generated: \"I love transformers!\""), "{out}");
    assert!(out.contains("margin:"));
    let (rc, out, _) = run(&["construct", "--map", "case-flip", "--input", "f"]);
    assert_eq!(rc, 0);
    assert!(out.contains("input \"f\" -> generated \"F\""), "{out}");
}

#[test]
fn construct_map_json_all_correct() {
    for spec in ["case-flip", "random2:4", "b=lueberries,a=pple pie"] {
        let (rc, out, err) = run(&["construct", "--map", spec, "--json"]);
        assert_eq!(rc, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["correct"], v["total"], "{spec}");
        assert_eq!(v["generated"], v["target"], "{spec}");
        assert!(v["margin"].as_f64().unwrap() > 0.0);
    }
}

/// Bad input: one line on stderr starting with "error: ", exit status 2, nothing on stdout.
#[test]
fn bad_targets_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["construct", "--target", "naïve"], "target character 3"),
        (&["construct", "--target", ""], "an empty string"),
        (
            &["construct", "--target", "tab\there"],
            "target character 4",
        ),
        (
            &["construct", "--target", "this is longer than twenty"],
            "at most 20 characters",
        ),
        (&["construct", "--map", "a=b,c"], "--map entry 2"),
        (&["construct", "--map", "a=b,a=c"], "repeated"),
        (&["construct", "--map", "a=b,cd=e"], "--map keys"),
        (&["construct", "--map", "AB=Z"], "'A'..='J'"),
        (
            &["construct", "--map", "a=eleven char"],
            "at most 10 characters",
        ),
        (
            &["construct", "--map", "a=b", "--construction", "sideways"],
            "--construction",
        ),
    ];
    for (args, needle) in cases {
        let (rc, out, err) = run(args);
        assert_eq!(rc, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// `--save` writes a model `load::load` opens (and `inspect` describes) plus the virtual token.
#[test]
fn construct_save_then_inspect_and_attention() {
    let dir = common::temp_dir("cli-con");
    let d = dir.to_str().unwrap();
    let (rc, _, err) = run(&["construct", "--target", "hello", "--save", d]);
    assert_eq!(rc, 0, "{err}");
    for f in [
        "model.safetensors",
        "prefix.safetensors",
        "construction.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let model = dir.join("model.safetensors");
    let (rc, out, err) = run(&["inspect", "--model", model.to_str().unwrap(), "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["arch"], "Construction");
    assert_eq!(v["d_model"], 40);
    assert_eq!(v["max_positions"], 20);
    // The attention views run on it with the saved virtual token as a soft prompt.
    let att = dir.join("att.npz");
    let (rc, _, err) = run(&[
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "hell",
        "--soft-prompt",
        dir.join("prefix.safetensors").to_str().unwrap(),
        "--out",
        att.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let arrays = prefixscope::arrays::read_arrays(&att).unwrap();
    let logits = &arrays["logits_last_prefixed"].data;
    let best = logits
        .iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    assert_eq!(
        best as u32,
        'o' as u32 - 32,
        "after 'hell' the virtual token says 'o'"
    );
    assert_eq!(arrays["blocks.0.attn.hook_pattern"].shape, vec![2, 4, 5]);
}

#[test]
fn capacity_reports_hard_against_soft() {
    let dir = common::temp_dir("cap");
    // Run where no models/ exists, so only the construction is counted.
    let o = bin()
        .current_dir(&dir)
        .args(["capacity", "--random", "200", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["hard_tried"], 94);
    assert_eq!(v[0]["hard_distinct"], 1);
    assert_eq!(v[0]["soft_distinct"], 200);
    let o = bin()
        .current_dir(&dir)
        .args(["capacity", "--random", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("toy model: none found"), "{text}");
}

/// A damaged construction file is refused with the tensor or field named.
#[test]
fn damaged_construction_files() {
    use prefixscope::construct;
    use prefixscope::construct::model::{Construction, META_CONFIG};
    let dir = common::temp_dir("bad-con");
    let b = construct::build_target("x").unwrap();
    let cfg = serde_json::to_string(b.model.config()).unwrap();
    let write = |name: &str, drop: Option<&str>, meta: Vec<(&str, String)>| {
        let tensors: Vec<(String, candle_core::Tensor)> = b
            .model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != drop)
            .map(|(n, a)| (n, a.to_tensor().unwrap()))
            .collect();
        let meta = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let kind = ("prefixscope.kind", "construction".to_string());
    let cases = [
        (
            write(
                "missing.safetensors",
                Some("attn.pos.w_q"),
                vec![kind.clone(), (META_CONFIG, cfg.clone())],
            ),
            "missing tensor 'attn.pos.w_q'",
        ),
        (
            write("noconfig.safetensors", None, vec![kind.clone()]),
            "metadata 'prefixscope.construction'",
        ),
        (
            write(
                "badconfig.safetensors",
                None,
                vec![kind.clone(), (META_CONFIG, "{\"name\": 3}".into())],
            ),
            "a construction config in JSON",
        ),
        (
            write("nokind.safetensors", None, vec![(META_CONFIG, cfg.clone())]),
            "no 'prefixscope.kind' metadata",
        ),
    ];
    for (path, needle) in &cases {
        let e = match prefixscope::load::load(path) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.one_line(),
        };
        assert!(e.contains(needle), "{e}");
        assert!(
            e.contains(path.file_name().unwrap().to_str().unwrap()),
            "{e}"
        );
    }
    assert!(Construction::load_file(&cases[0].0).is_err());
}
