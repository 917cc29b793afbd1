//! `capture::capture_each` (#16: `prefixscope attention` writes a long prompt's maps one layer at a
//! time) gives exactly what `capture::capture` gives, layer by layer, for every prefix kind, on a RoPE
//! model (the two runs walked side by side) and on a learned-position toy (captured whole, then handed
//! over); a failing sink stops the walk; and the `.npz` the command streams is the file the whole
//! capture would have written, with nothing left behind when it fails.

mod common;

use common::{temp_dir, tiny_llama_config, tiny_llama_folder};
use prefixscope::arrays::{read_arrays, write_arrays_owned, NpzWriter};
use prefixscope::capture::{capture, capture_each, Capture, LayerCapture};
use prefixscope::model::{LayerSel, Transformer};
use prefixscope::prefix::{Prefix, PrefixKind};

fn tiny_llama(dir: &std::path::Path) -> Box<dyn Transformer> {
    let mut cfg = tiny_llama_config();
    cfg["num_hidden_layers"] = 3.into();
    tiny_llama_folder(dir, cfg, |_| {});
    prefixscope::load::load(dir).unwrap().model
}

/// A prefix of kind `kind` with every value set (zeros would hide a prefix that is never read).
fn filled(kind: PrefixKind, info: &prefixscope::model::ModelInfo) -> Prefix {
    let mut pf = Prefix::zeros(kind, 3, info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
    }
    pf
}

/// Every array of a layer's views, named, for comparison.
fn fields(l: &LayerCapture) -> Vec<(&'static str, Option<&prefixscope::arrays::Array>)> {
    vec![
        ("with_prefix", l.with_prefix.as_ref()),
        ("renormalized", l.renormalized.as_ref()),
        ("pretrained", Some(&l.pretrained)),
        ("prefix_mass", l.prefix_mass.as_ref()),
        ("z_prefixed", l.z_prefixed.as_ref()),
        ("z_pretrained", Some(&l.z_pretrained)),
        ("prefix_values", l.prefix_values.as_ref()),
    ]
}

/// `capture_each` against `capture` on the same inputs: the same layers in the same order, every
/// view equal to the bit (the same stepper calls make both), and the same ends.
fn assert_same_as_capture(
    model: &dyn Transformer,
    ids: &[u32],
    prefix: Option<&Prefix>,
    what: &str,
) {
    let sel = LayerSel::Only(vec![0, 2]);
    let whole: Capture = capture(model, ids, prefix, &sel).unwrap();
    let mut got = Vec::new();
    let ends = capture_each(model, ids, prefix, &sel, &mut |l| {
        got.push(l);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        got.iter().map(|l| l.layer).collect::<Vec<_>>(),
        vec![0, 2],
        "{what}: layers"
    );
    for (a, b) in got.iter().zip(&whole.layers) {
        for ((name, x), (_, y)) in fields(a).into_iter().zip(fields(b)) {
            match (x, y) {
                (Some(x), Some(y)) => {
                    assert_eq!(x.shape, y.shape, "{what} layer {} {name}: shape", a.layer);
                    assert!(
                        x.data
                            .iter()
                            .zip(&y.data)
                            .all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{what} layer {} {name}: values differ",
                        a.layer
                    );
                }
                (None, None) => {}
                _ => panic!("{what} layer {} {name}: in one capture only", a.layer),
            }
        }
    }
    assert_eq!(ends.token_ids, whole.token_ids, "{what}");
    assert_eq!(ends.p, whole.p, "{what}");
    assert_eq!(
        ends.logits_last_pretrained, whole.logits_last_pretrained,
        "{what}"
    );
    assert_eq!(
        ends.logits_last_prefixed, whole.logits_last_prefixed,
        "{what}"
    );
}

#[test]
fn layer_by_layer_equals_the_whole_capture_for_every_prefix_kind() {
    let d = temp_dir("capture-each-llama");
    let model = tiny_llama(&d);
    let ids = [3u32, 17, 5, 42, 8, 1, 29, 11];
    assert_same_as_capture(model.as_ref(), &ids, None, "no prefix");
    for kind in [
        PrefixKind::SoftPrompt,
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
    ] {
        let pf = filled(kind, model.info());
        assert_same_as_capture(model.as_ref(), &ids, Some(&pf), &format!("{kind:?}"));
    }
}

#[test]
fn a_learned_position_toy_is_captured_whole_and_handed_over_the_same() {
    let d = temp_dir("capture-each-toy");
    let path = d.join("toy.safetensors");
    let cfg = prefixscope::model::gpt::GptConfig {
        n_layer: 3,
        ..toy_cfg()
    };
    write_toy(&path, &cfg);
    let model = prefixscope::load::load(&path).unwrap().model;
    assert!(
        model.info().max_positions.is_some(),
        "a learned-position model"
    );
    let ids = [1u32, 2, 3, 0, 2];
    assert_same_as_capture(model.as_ref(), &ids, None, "toy, no prefix");
    for kind in [PrefixKind::SoftPrompt, PrefixKind::Hidden] {
        let pf = filled(kind, model.info());
        assert_same_as_capture(model.as_ref(), &ids, Some(&pf), &format!("toy {kind:?}"));
    }
}

#[path = "toy_common.rs"]
mod toy_common;

fn toy_cfg() -> prefixscope::model::gpt::GptConfig {
    toy_common::cfg(3, 2, 8, false)
}

fn write_toy(path: &std::path::Path, cfg: &prefixscope::model::gpt::GptConfig) {
    toy_common::write_toy(path, cfg, 7);
}

#[test]
fn a_failing_sink_stops_the_walk_with_its_error() {
    let d = temp_dir("capture-each-stop");
    let model = tiny_llama(&d);
    let mut calls = 0;
    let err = capture_each(
        model.as_ref(),
        &[1, 2, 3],
        None,
        &LayerSel::All,
        &mut |_| {
            calls += 1;
            Err(prefixscope::Error::Internal("disk full"))
        },
    )
    .unwrap_err();
    assert_eq!(calls, 1, "the walk went on after the sink failed");
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn the_streamed_npz_is_the_whole_file_and_a_failed_one_leaves_nothing() {
    let d = temp_dir("capture-each-npz");
    let model = tiny_llama(&d.join("model"));
    let pf = filled(PrefixKind::KeyValue, model.info());
    let whole = capture(model.as_ref(), &[4, 9, 2, 7], Some(&pf), &LayerSel::All).unwrap();
    let named = whole.into_named_arrays();
    // The whole capture through the one-shot writer, and the same arrays one at a time.
    let (a, b) = (d.join("whole.npz"), d.join("streamed.npz"));
    write_arrays_owned(&a, named.clone()).unwrap();
    let mut w = NpzWriter::create(&b).unwrap();
    for (name, x) in &named {
        w.add(name, x).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let back = read_arrays(&b).unwrap();
    assert_eq!(back.len(), named.len());
    for (name, x) in &named {
        assert_eq!(&back[name].data, &x.data, "{name}");
    }
    // Dropped before `finish` (an error on the way): no file, no temporary left, an old file kept.
    std::fs::write(d.join("old.npz"), b"old").unwrap();
    let mut w = NpzWriter::create(&d.join("old.npz")).unwrap();
    w.add(&named[0].0, &named[0].1).unwrap();
    drop(w);
    assert_eq!(std::fs::read(d.join("old.npz")).unwrap(), b"old");
    let left: Vec<_> = std::fs::read_dir(&*d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
