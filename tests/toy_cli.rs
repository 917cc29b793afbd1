//! `prefixscope eval` refuses what is not a toy model or a prefix that does not fit, with one line
//! on stderr and exit status 2.

mod toy_common;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prefixscope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn eval_rejects_non_toys_and_misfit_prefixes() {
    let dir = toy_common::tmp_dir("cli");
    let model = dir.join("toy.safetensors");
    let cfg = toy_common::cfg(2, 2, 16, false);
    toy_common::write_toy(&model, &cfg, 1);

    // A safetensors file that is not one of ours.
    let plain = dir.join("plain.safetensors");
    let t =
        candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("x".to_string(), t)]),
        &plain,
    )
    .unwrap();
    let (code, _, err) = run(&[
        "eval",
        "--model",
        plain.to_str().unwrap(),
        "--task",
        "ascending",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains("plain.safetensors")
            && err.contains("prefixscope.kind"),
        "{err}"
    );

    // A text file with a model extension.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, "not a model").unwrap();
    let (code, _, err) = run(&[
        "eval",
        "--model",
        junk.to_str().unwrap(),
        "--task",
        "ascending",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("junk.gguf"), "{err}");

    // A prefix of the wrong width: (2, 1, 8) for a 16-wide model.
    let pf = dir.join("bad_prefix.npy");
    let t = candle_core::Tensor::zeros(
        (2, 1, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.write_npy(&pf).unwrap();
    let (code, _, err) = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--prefix",
        pf.to_str().unwrap(),
        "--task",
        "add1",
        "--samples",
        "10",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad_prefix.npy") && err.contains("[2, 1, 16]") && err.contains("[2, 1, 8]"),
        "{err}"
    );

    // The same model evaluates fine, and --json prints the documented fields.
    let (code, out, err) = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "add1",
        "--samples",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["task"], "add1");
    assert_eq!(v["samples"], 20);
    // A count out of 20 samples (what the number means is checked on the shipped models below).
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((acc * 20.0 - (acc * 20.0).round()).abs() < 1e-9, "{acc}");

    // Per-position accuracy on the shipped sorter (91% exact match on ascending): every position is
    // right at least as often as the whole output, and the text form prints the same ten numbers.
    let sorter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/sort-1l1h/ascending.safetensors");
    let args = [
        "eval",
        "--model",
        sorter.to_str().unwrap(),
        "--task",
        "ascending",
        "--samples",
        "200",
    ];
    let (code, out, err) = run(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    let pos: Vec<f64> = v["position_accuracy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(pos.len(), 10);
    assert!(acc > 0.8, "the sorter sorts: {acc}");
    assert!(
        pos.iter().all(|&f| f >= acc && f <= 1.0),
        "{pos:?} vs {acc}"
    );
    assert!(
        pos.iter().any(|&f| f > acc),
        "some outputs are partly right: {pos:?}"
    );
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("right token per output position"))
        .unwrap();
    let cells: Vec<f64> = line
        .rsplit(": ")
        .next()
        .unwrap()
        .split(' ')
        .map(|c| c.parse().unwrap())
        .collect();
    for (c, f) in cells.iter().zip(&pos) {
        assert!((c - 100.0 * f).abs() < 0.051, "{line} vs {pos:?}");
    }
}

/// `eval` on the shipped files gives the accuracies recorded in `models/manifest.json` (measured by
/// `.ci/toy-manifest.sh` with the same command: 3,200 test samples, seed 0). The manifest is the
/// expected value, written when the files were made; a change in data, generation or scoring moves
/// these counts. One sample of slack covers a tie broken differently by float rounding.
#[test]
fn eval_reproduces_the_manifest_accuracies_of_shipped_models() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("models/manifest.json")).unwrap())
            .unwrap();
    let models = root.join("models");
    let m = |f: &str| models.join(f).to_str().unwrap().to_string();
    // (file, the eval arguments): the pretrained sorter, and a prefix on the four-task model.
    let cases = [
        (
            "sort-1l1h/ascending.safetensors",
            vec!["--model".to_string(), m("sort-1l1h/ascending.safetensors")],
        ),
        (
            "mix-1l4h256/prefix-add1.safetensors",
            vec![
                "--model".to_string(),
                m("mix-1l4h256/random.safetensors"),
                "--prefix".to_string(),
                m("mix-1l4h256/prefix-add1.safetensors"),
            ],
        ),
    ];
    for (file, args) in cases {
        let entry = manifest
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["file"] == file)
            .unwrap_or_else(|| panic!("{file} not in models/manifest.json"));
        let (want, samples) = (
            entry["accuracy"].as_f64().unwrap(),
            entry["samples"].as_u64().unwrap(),
        );
        let task = entry["task"].as_str().unwrap();
        let samples_s = samples.to_string();
        let mut all: Vec<&str> = vec!["eval"];
        all.extend(args.iter().map(|s| s.as_str()));
        all.extend(["--task", task, "--samples", &samples_s, "--json"]);
        let (code, out, err) = run(&all);
        assert_eq!(code, 0, "{file}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let got = v["accuracy"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1.0 / samples as f64 + 1e-12,
            "{file} on {task}: {got} vs the manifest's {want} ({samples} samples)"
        );
    }
}
