//! The paper's toy figures (a), (b), (c) on small random toy models written here with the same
//! metadata the shipped ones carry, so the code paths are checked whatever models/ holds.

#[path = "toy_common.rs"]
mod toy_common;

use prefixscope::figure::paper;
use prefixscope::figure::raster;
use prefixscope::figure::svg::Panel;
use prefixscope::load::toy;
use std::collections::HashMap;
use std::path::Path;

fn meta(
    kind: &str,
    task: &str,
    base: Option<&str>,
    cfg: &prefixscope::model::gpt::GptConfig,
) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(toy::KIND.to_string(), kind.to_string());
    m.insert(toy::TASK.to_string(), task.to_string());
    m.insert(toy::CONFIG.to_string(), serde_json::to_string(cfg).unwrap());
    m.insert(toy::PREFIX_SIZE.to_string(), "1".to_string());
    if let Some(b) = base {
        m.insert(toy::BASE.to_string(), b.to_string());
    }
    m
}

fn write_prefix(
    path: &Path,
    base: &str,
    task: &str,
    cfg: &prefixscope::model::gpt::GptConfig,
    seed: u64,
) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = prefixscope::train::randn(&mut rng, &[cfg.n_layer, 1, cfg.n_embd], 1.0).unwrap();
    toy::write(
        path,
        &[("prefix".to_string(), t)],
        &meta("toy-prefix", task, Some(base), cfg),
    )
    .unwrap();
}

/// A models folder with a random sorter (+ fine-tune + prefix) and a random four-task model
/// (+ four prefixes).
fn models() -> toy_common::Scratch {
    let dir = toy_common::tmp_dir("figure-toys");
    let s = toy_common::cfg(1, 1, 16, false);
    toy::write(
        &dir.join("sorter.safetensors"),
        &toy_common::random_tensors(&s, 1),
        &meta("toy-gpt", "ascending", None, &s),
    )
    .unwrap();
    toy::write(
        &dir.join("sorter-ft.safetensors"),
        &toy_common::random_tensors(&s, 2),
        &meta(
            "toy-finetuned",
            "descending",
            Some("models/sorter.safetensors"),
            &s,
        ),
    )
    .unwrap();
    write_prefix(
        &dir.join("sorter-prefix.safetensors"),
        "sorter.safetensors",
        "descending",
        &s,
        3,
    );
    let m = toy_common::cfg(1, 4, 256, true);
    toy::write(
        &dir.join("mix.safetensors"),
        &toy_common::random_tensors(&m, 4),
        &meta("toy-gpt", "random", None, &m),
    )
    .unwrap();
    for (k, t) in paper::TASKS.iter().enumerate() {
        write_prefix(
            &dir.join(format!("mix-{t}.safetensors")),
            "mix.safetensors",
            t,
            &m,
            10 + k as u64,
        );
    }
    dir
}

fn heatmaps(p: &[Panel]) -> Vec<&prefixscope::figure::Heatmap> {
    p.iter()
        .filter_map(|x| match x {
            Panel::Heatmap(h) => Some(h),
            _ => None,
        })
        .collect()
}

#[test]
fn toy_figures_from_metadata() {
    let dir = models();
    let all = paper::scan_models(&dir).unwrap();
    assert_eq!(all.len(), 8);

    // (a): three raw panels of the input plus 9 outputs, each row a distribution.
    let sorter = paper::find_sorter(&dir, &all).unwrap();
    let a = paper::sorter_figure(&sorter).unwrap();
    let maps = heatmaps(&a.figure.panels);
    assert_eq!(maps.len(), 3);
    for h in &maps {
        assert_eq!((h.rows(), h.cols()), (19, 20));
        assert_eq!(
            &h.row_labels[..10],
            &["2", "6", "0", "1", "4", "6", "3", "0", "1", "2"]
        );
        for r in 0..19 {
            let s: f32 = (0..20).map(|c| h.get(r, c)).filter(|v| v.is_finite()).sum();
            assert!((s - 1.0).abs() < 1e-4, "{}: row {r} sums to {s}", h.name);
            // Causal: nothing drawn after the diagonal (column 0 is the prefix or pad).
            if r < 18 {
                assert!(h.get(r, r + 2).is_nan());
            }
            assert!(h.get(r, r + 1).is_finite());
        }
    }
    assert_eq!(maps[2].col_labels[0], "[prefix]");
    assert_eq!(maps[0].col_labels[0], "[pad]");
    // Layer 0 of a one-layer model: after renormalizing over the content, prefix-tuned = pretrained.
    let r = a.data["max_abs_diff_input_rows_renormalized_prefixtuned_vs_pretrained"]
        .as_f64()
        .unwrap();
    assert!(r < 1e-5, "{r}");
    let raw = a.data["max_abs_diff_input_rows_content_prefixtuned_vs_pretrained"]
        .as_f64()
        .unwrap();
    assert!(
        raw > 1e-3,
        "a random prefix takes another share than the pad token: {raw}"
    );

    // (b): 5 rows x 4 heads, raw and renormalized; renormalized equals pretrained on the same tokens.
    let four = paper::find_four_task(&dir, &all).unwrap();
    let b = paper::four_task_figures(&four).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(heatmaps(&b[0].figure.panels).len(), 20);
    assert_eq!(heatmaps(&b[1].figure.panels).len(), 20);
    let worst = b[1].data["max_abs_renormalized_minus_pretrained"]
        .as_f64()
        .unwrap();
    assert!(worst < 1e-5, "{worst}");
    assert!(b[1].caption.contains("add2 prefix"));

    // (c): 20 inputs, without and with each prefix, on two chosen dimensions.
    let c = paper::bias_figure(&four, Some((3, 7))).unwrap();
    assert_eq!(c.data["dims"], serde_json::json!([3, 7]));
    assert_eq!(c.data["without_prefix"].as_array().unwrap().len(), 20);
    let with = c.data["with_prefix"].as_array().unwrap();
    assert_eq!(with.len(), 4);
    for w in with {
        assert_eq!(w["points"].as_array().unwrap().len(), 20);
        let len = w["mean_shift_length"].as_f64().unwrap();
        assert!(len > 0.0 && len.is_finite());
    }
    let default_dims = paper::bias_figure(&four, None).unwrap();
    assert_eq!(default_dims.data["dims"], serde_json::json!([143, 212]));
    assert!(paper::bias_figure(&four, Some((0, 256))).is_err());

    // Every figure parses and renders.
    for m in [&a, &b[0], &b[1], &c] {
        let svg = m.figure.to_svg();
        let tree = raster::parse(&svg).unwrap();
        assert!(tree.size().width() > 100.0);
        assert!(svg.contains(m.figure.title.as_deref().unwrap()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_models_are_named() {
    let dir = toy_common::tmp_dir("figure-toys-empty");
    let e = paper::find_sorter(&dir, &[]).err().unwrap();
    assert!(
        e.one_line().contains("1 layer, 1 head, task ascending"),
        "{}",
        e.one_line()
    );
    let e = paper::find_four_task(&dir, &[]).err().unwrap();
    assert!(
        e.one_line().contains("4 heads, task random"),
        "{}",
        e.one_line()
    );
}

#[test]
fn gpt_attention_block_output_is_c_proj_with_its_bias() {
    use prefixscope::model::{LayerSel, Transformer};
    let dir = toy_common::tmp_dir("figure-toys-cproj");
    let cfg = toy_common::cfg(2, 4, 32, false);
    let path = dir.join("m.safetensors");
    toy::write(
        &path,
        &toy_common::random_tensors(&cfg, 7),
        &meta("toy-gpt", "random", None, &cfg),
    )
    .unwrap();
    let loaded = prefixscope::load::load(&path).unwrap();
    let model: &dyn Transformer = loaded.model.as_ref();
    let run = model
        .pretrained(&[3, 1, 4, 1, 5], 1, &LayerSel::All)
        .unwrap();
    let w = prefixscope::arrays::read_arrays(&path).unwrap();
    for l in 0..2 {
        let z = &run.layers[l].z; // (H, n, hd)
        let out = model.attn_block_output(l, z).unwrap(); // (n, d)
        let got = prefixscope::arrays::Array::from_tensor(&out).unwrap();
        let zc = prefixscope::arrays::Array::from_tensor(z).unwrap();
        let wt = &w[&format!("transformer.h.{l}.attn.c_proj.weight")]; // (out, in)
        let b = &w[&format!("transformer.h.{l}.attn.c_proj.bias")];
        let (h, n, hd) = (zc.shape[0], zc.shape[1], zc.shape[2]);
        let d = h * hd;
        assert_eq!(got.shape, vec![n, d]);
        for i in 0..n {
            for o in 0..d {
                // Heads concatenated in order: input feature k = head * hd + e.
                let mut want = b.data[o];
                for hh in 0..h {
                    for e in 0..hd {
                        want += wt.data[o * d + hh * hd + e] * zc.data[(hh * n + i) * hd + e];
                    }
                }
                let g = got.data[i * d + o];
                assert!(
                    (g - want).abs() < 1e-4,
                    "layer {l} row {i} out {o}: {g} vs {want}"
                );
            }
        }
    }
    assert!(model.attn_block_output(2, &run.layers[0].z).is_err());
}
