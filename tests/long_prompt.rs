//! The long-prompt path (#16): memory grows with N^2 only for the layers asked for.
//! - `attention --layers` writes the arrays of those layers only, and its peak memory at N = 1,024
//!   stays far below what the 30 layers' maps alone would take;
//! - the incremental evaluator (what the app runs) viewing one layer does not keep every layer's
//!   pretrained map.
//!
//! One test in this file on purpose: it reads the process's and its children's peak memory, which
//! other tests running in parallel in the same process would disturb.

// Linux only: /proc/self/status, clear_refs and getrusage.
#![cfg(target_os = "linux")]

mod common;

use prefixscope::incremental::{Edit, Evaluator};

/// Resident high-water mark of this process (`VmHWM`), in bytes.
fn peak_self() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn current_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Largest peak resident memory of the children waited for so far, in bytes.
fn peak_children() -> u64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024
}

#[test]
fn memory_grows_with_n_squared_only_for_the_layers_asked_for() {
    let Some(model) = common::smollm2_or_skip() else {
        return;
    };
    let n = 1024;
    let (heads, layers) = (9u64, 30u64);
    let map_bytes = heads * (n * n) as u64 * 4;
    let ids: Vec<u32> = (0..n).map(|k| ((k * 7919 + 13) % 49152) as u32).collect();
    let id_list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");

    // The command line: two layers asked for, two layers written.
    let dir = common::temp_dir("long_prompt");
    let out = dir.join("two.npz");
    let (code, _, err) = common::run_bin(&[
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &id_list,
        "--layers",
        "3,17",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let arrays = common::npz_f32(&out);
    let mut names: Vec<&str> = arrays.keys().map(|s| s.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blocks.17.attn.hook_pattern_pretrained",
            "blocks.3.attn.hook_pattern_pretrained",
            "logits_last_pretrained",
            "token_ids"
        ]
    );
    assert_eq!(arrays["blocks.3.attn.hook_pattern_pretrained"].0, [9, n, n]);
    // The model (f32, about 0.6 GB) plus the two maps and their copies while written: well under the
    // model plus the 30 layers' maps (1.1 GB) that a run keeping every layer would hold.
    let peak = peak_children();
    eprintln!(
        "attention --layers 3,17, N = {n}: peak {} MB",
        peak / 1_000_000
    );
    assert!(
        peak < 600_000_000 + layers * map_bytes / 2,
        "attention --layers 3,17 at N = {n}: peak {} MB",
        peak / 1_000_000
    );

    // The evaluator viewing one layer: its pretrained side keeps q/k/v per layer, not 30 maps.
    let loaded = prefixscope::load::load(&model).unwrap();
    let m = loaded.model.as_ref();
    let mut ev = Evaluator::new(&ids);
    // A new peak window (Linux >= 4.0): VmHWM restarts from the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = current_rss();
    let cap = ev.update(m, None, Edit::All, &[5]).unwrap();
    assert_eq!(cap.layers.len(), 1);
    assert_eq!(cap.layers[0].pretrained.shape, [9, n, n]);
    let grown = peak_self().saturating_sub(before);
    eprintln!(
        "evaluator, one layer viewed, N = {n}: grew {} MB",
        grown / 1_000_000
    );
    assert!(
        grown < layers * map_bytes / 2,
        "the evaluator grew by {} MB viewing one layer at N = {n} (30 maps: {} MB)",
        grown / 1_000_000,
        layers * map_bytes / 1_000_000
    );
}
