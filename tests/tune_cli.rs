//! `prefixscope tune` on the shipped toy: it lowers the loss, writes a prefix the engine reads back
//! (file or PEFT adapter), resumes exactly (6 + 4 steps give the bytes 10 steps give), and refuses
//! bad input with one line and exit status 2.

mod common;

use common::*;
use prefixscope::prefix::{Prefix, PrefixKind};

const TOY: &str = "models/deep-4l4h128/random.safetensors";

fn toy() -> String {
    repo_path(TOY).display().to_string()
}

fn tune(out: &str, kind: &str, steps: usize, extra: &[&str]) -> (i32, String) {
    tune_env(out, kind, steps, extra, &[])
}

/// [`tune`] with environment variables set for the process (the matmul backend's settings).
fn tune_env(
    out: &str,
    kind: &str,
    steps: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String) {
    let steps = steps.to_string();
    let model = toy();
    let mut args = vec![
        "tune",
        "--model",
        &model,
        "--kind",
        kind,
        "--length",
        "2",
        "--prompt",
        "3 1 4 1 5",
        "--target",
        "1 1 3",
        "--steps",
        &steps,
        "--lr",
        "0.05",
        "--seed",
        "3",
        "--out",
        out,
        "--log-every",
        "0",
    ];
    args.extend_from_slice(extra);
    let mut c = std::process::Command::new(bin());
    c.args(&args).env_remove("PREFIXSCOPE_BLAS");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run prefixscope");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), err)
}

/// The loss before and after, from the closing line.
fn losses(err: &str) -> (f64, f64) {
    let line = err.lines().find(|l| l.starts_with("tuned ")).expect(err);
    let part = line.split("loss ").nth(1).unwrap();
    let mut it = part.split(" -> ");
    let a: f64 = it.next().unwrap().trim().parse().unwrap();
    let b: f64 = it
        .next()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (a, b)
}

#[test]
fn tuning_every_kind_lowers_the_loss_and_writes_a_prefix_the_engine_reads() {
    let d = tempfile::tempdir().unwrap();
    for (kind, pk) in [
        ("soft", PrefixKind::SoftPrompt),
        ("kv", PrefixKind::KeyValue),
        ("paper", PrefixKind::Hidden),
    ] {
        let out = d.path().join(format!("{kind}.npz"));
        let (code, err) = tune(out.to_str().unwrap(), kind, 12, &[]);
        assert_eq!(code, 0, "{kind}: {err}");
        let (before, after) = losses(&err);
        assert!(after < 0.8 * before, "{kind}: loss {before} -> {after}");
        let p = Prefix::load(&out, pk).unwrap();
        assert_eq!(p.len(), 2);
        assert!(out.with_file_name(format!("{kind}.npz.tune")).exists());
    }
    // A PEFT adapter folder: the name has no prefix-file extension.
    let dir = d.path().join("adapter");
    let (code, err) = tune(dir.to_str().unwrap(), "kv", 3, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.join("adapter_config.json").exists());
    assert!(dir.join("adapter_model.safetensors").exists());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let d = tempfile::tempdir().unwrap();
    let whole = d.path().join("whole.safetensors");
    let split = d.path().join("split.safetensors");
    assert_eq!(tune(whole.to_str().unwrap(), "paper", 10, &[]).0, 0);
    assert_eq!(tune(split.to_str().unwrap(), "paper", 6, &[]).0, 0);
    let (code, err) = tune(split.to_str().unwrap(), "paper", 10, &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming"), "{err}");
    let a = Prefix::load(&whole, PrefixKind::Hidden).unwrap();
    let b = Prefix::load(&split, PrefixKind::Hidden).unwrap();
    assert_eq!(a, b, "6 + 4 steps differ from 10 steps");
}

/// The state records the matmul backend and `--resume` takes it again (products on two backends
/// differ at rounding level): a run begun on candle's gemm resumes on it in a process left to choose
/// for itself, with no note, and ends on the bytes of an uninterrupted run on candle's gemm. Where
/// the backend cannot be the recorded one (here: forced off), one line says so.
#[test]
fn a_resumed_run_takes_the_backend_it_started_with() {
    let d = tempfile::tempdir().unwrap();
    let whole = d.path().join("whole.safetensors");
    let split = d.path().join("split.safetensors");
    let off = [("PREFIXSCOPE_BLAS", "off")];
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    assert_eq!(tune_env(&s(&whole), "paper", 8, &[], &off).0, 0);
    assert_eq!(tune_env(&s(&split), "paper", 5, &[], &off).0, 0);
    assert_eq!(
        prefixscope::tune::state::recorded_matmul(&split).as_deref(),
        Some("candle gemm")
    );
    let (code, err) = tune(&s(&split), "paper", 8, &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming") && !err.contains("note:"), "{err}");
    let a = Prefix::load(&whole, PrefixKind::Hidden).unwrap();
    let b = Prefix::load(&split, PrefixKind::Hidden).unwrap();
    assert_eq!(a, b, "5 + 3 steps on candle's gemm differ from 8");
    // A run begun on the default backend and resumed with BLAS off: where the default is a BLAS
    // library, the resumed run says its numbers may differ.
    let other = d.path().join("other.safetensors");
    assert_eq!(tune(&s(&other), "paper", 2, &[]).0, 0);
    let recorded = prefixscope::tune::state::recorded_matmul(&other).expect("recorded backend");
    let (code, err) = tune_env(&s(&other), "paper", 3, &["--resume"], &off);
    assert_eq!(code, 0, "{err}");
    let notes = err.lines().filter(|l| l.starts_with("note:")).count();
    assert_eq!(
        notes,
        usize::from(recorded != "candle gemm"),
        "{recorded}: {err}"
    );
    if notes == 1 {
        assert!(
            err.contains("rounding level") && err.contains(&recorded),
            "{err}"
        );
    }
}

#[test]
fn bad_input_is_refused_with_one_line() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("p.npz");
    let out_s = out.to_str().unwrap().to_string();
    let model = toy();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "tune", "--model", &model, "--kind", "soft", "--prompt", "1 2", "--target", "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let v = base(extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        assert_clean_error(&refs, needles);
    };
    check(&["--length", "0", "--out", &out_s], &["--length"]);
    check(&["--length", "2", "--lr", "0", "--out", &out_s], &["--lr"]);
    check(
        &["--length", "2", "--out", "/nonexistent-dir/p.npz"],
        &["folder"],
    );
    check(&["--length", "200", "--out", &out_s], &["context"]);
    check(&["--length", "28", "--out", &out_s], &["example 0"]);
    std::fs::write(&out, b"x").unwrap();
    check(&["--length", "2", "--out", &out_s], &["--resume"]);
    std::fs::remove_file(&out).unwrap();
    check(
        &["--length", "2", "--out", &out_s, "--resume"],
        &["--resume", "p.npz.tune"],
    );
    // Key/value prefixes are two arrays: not one .npy.
    let v: Vec<String> = [
        "tune", "--model", &model, "--kind", "kv", "--length", "2", "--prompt", "1 2", "--target",
        "3", "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([d.path().join("kv.npy").display().to_string()])
    .collect();
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_clean_error(&refs, &[".npy"]);
    // A data file with a line that is not a pair.
    let data = d.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"1 2\", \"target\": \"3\"}\n{\"prompt\": 5}\n",
    )
    .unwrap();
    let data_s = data.display().to_string();
    let v: Vec<String> = [
        "tune", "--model", &model, "--kind", "soft", "--length", "2", "--data", &data_s, "--out",
        &out_s,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_clean_error(&refs, &["data.jsonl", "line 2"]);
    // A token the toy's digit vocabulary does not have.
    let v: Vec<String> = [
        "tune", "--model", &model, "--kind", "soft", "--length", "2", "--prompt", "1 2",
        "--target", "x", "--out", &out_s,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    assert_clean_error(&refs, &["digit"]);
}

/// A LLaMA-family Hugging Face folder (the tiny Qwen3 of the conformance fixtures, with its
/// tokenizer): a key/value prefix tuned into a PEFT adapter folder that the engine opens again with
/// the tuned numbers.
#[test]
fn an_hf_folder_tunes_into_a_peft_adapter_the_engine_reads_back() {
    let d = tempfile::tempdir().unwrap();
    let model = repo_path("tests/fixtures/conformance/qwen3/hf");
    let dir = d.path().join("qwen3-adapter");
    let (code, _, err) = run_bin(&[
        "tune",
        "--model",
        model.to_str().unwrap(),
        "--kind",
        "kv",
        "--length",
        "2",
        "--prompt",
        "hello world",
        "--target",
        " again",
        "--steps",
        "4",
        "--lr",
        "0.05",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (before, after) = losses(&err);
    assert!(after < before, "loss {before} -> {after}");
    let loaded = prefixscope::load::load(&model).unwrap();
    let a = prefixscope::peft::open(&dir, loaded.model.info(), &model).unwrap();
    assert_eq!(a.prefix.kind(), PrefixKind::KeyValue);
    assert_eq!(a.prefix.len(), 2);
    // The adapter holds the state file's prefix (what the run tuned), to f32.
    let st = prefixscope::load::toy::read(&prefixscope::tune::state::state_path(&dir)).unwrap();
    let keys: Vec<f32> = st.tensors["prefix.0"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let Prefix::KeyValue { keys: k, .. } = &a.prefix else {
        unreachable!()
    };
    assert_eq!(k.data, keys);
}

/// `--data`: several prompt/target pairs tuned at once (a task, not one sentence); the loss is over
/// all of them, and the tuned prefix makes every target the argmax.
#[test]
fn a_data_file_tunes_one_prefix_for_several_pairs() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"3 1 4\", \"target\": \"7\"}\n\n{\"prompt\": \"2 2\", \"target\": \"7 7\"}\n",
    )
    .unwrap();
    let out = d.path().join("task.npz");
    let (code, _, err) = run_bin(&[
        "tune",
        "--model",
        &toy(),
        "--kind",
        "soft",
        "--length",
        "3",
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "60",
        "--lr",
        "0.1",
        "--out",
        out.to_str().unwrap(),
        "--log-every",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let (before, after) = losses(&err);
    assert!(after < 0.5 * before, "loss {before} -> {after}");
    // The closing progress line reports accuracy over all 3 target tokens.
    let last = err.lines().rev().find(|l| l.starts_with("step")).unwrap();
    assert!(last.contains("acc 1.000"), "{last}");
}
