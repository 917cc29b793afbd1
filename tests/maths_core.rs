//! Hand-derived checks of the maths core's small functions, each on numbers small enough to work
//! out on paper (written next to each case). Added where cargo-mutants showed a mutant that the
//! reference-fixture tests cannot see: index arithmetic on shapes those fixtures never vary, a
//! relative error whose scale is 1 on every fixture, a boundary no fixture reaches.
//! Every value here is dyadic (k / 2^m), so float32 computes it exactly and the checks are `==`.

mod common;
mod toy_common;

use prefixscope::arrays::Array;
use prefixscope::capture::{self, LayerCapture};

fn arr(shape: &[usize], data: &[f32]) -> Array {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    Array {
        shape: shape.to_vec(),
        data: data.to_vec(),
    }
}

/// Two heads, two content rows, two prefix columns, head size 2.
///
/// with_prefix `[head][row] = [prefix 0, prefix 1 | content 0, content 1]`:
///   head 0: row 0 `[1/4, 1/4 | 1/2, 0]`, row 1 `[1/2, 0 | 1/4, 1/4]`
///   head 1: row 0 `[0, 3/4 | 1/4, 0]`,   row 1 `[1/8, 1/8 | 1/2, 1/4]`
/// prefix mass a = row sums of the prefix columns: head 0 `[1/2, 1/2]`, head 1 `[3/4, 1/4]`.
/// prefix values `[head][k]`: head 0 `[2, 0], [0, 4]`; head 1 `[1, 1], [-2, 6]`.
/// pretrained head outputs t `[head][row]`: head 0 `[1, 2], [3, -1]`; head 1 `[0, 4], [2, 2]`.
///
/// The identity's prediction `(1 - a) t + sum_k A[i,k] v_k`, by hand:
///   head 0 row 0: 1/2 [1, 2] + 1/4 [2, 0] + 1/4 [0, 4]   = [1, 2]
///   head 0 row 1: 1/2 [3, -1] + 1/2 [2, 0]               = [5/2, -1/2]
///   head 1 row 0: 1/4 [0, 4] + 3/4 [-2, 6]               = [-3/2, 11/2]
///   head 1 row 1: 3/4 [2, 2] + 1/8 [1, 1] + 1/8 [-2, 6]  = [11/8, 19/8]
fn identity_case(z_prefixed: [f32; 8]) -> LayerCapture {
    LayerCapture {
        layer: 0,
        with_prefix: Some(arr(
            &[2, 2, 4],
            &[
                0.25, 0.25, 0.5, 0.0, 0.5, 0.0, 0.25, 0.25, //
                0.0, 0.75, 0.25, 0.0, 0.125, 0.125, 0.5, 0.25,
            ],
        )),
        renormalized: None,
        pretrained: arr(&[2, 2, 2], &[1.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5]),
        prefix_mass: Some(arr(&[2, 2], &[0.5, 0.5, 0.75, 0.25])),
        z_prefixed: Some(arr(&[2, 2, 2], &z_prefixed)),
        z_pretrained: arr(&[2, 2, 2], &[1.0, 2.0, 3.0, -1.0, 0.0, 4.0, 2.0, 2.0]),
        prefix_values: Some(arr(&[2, 2, 2], &[2.0, 0.0, 0.0, 4.0, 1.0, 1.0, -2.0, 6.0])),
    }
}

const PREDICTED: [f32; 8] = [1.0, 2.0, 2.5, -0.5, -1.5, 5.5, 1.375, 2.375];

#[test]
fn head_output_identity_error_on_hand_computed_outputs() {
    // Exactly the prediction: no error, whichever heads are asked.
    let exact = identity_case(PREDICTED);
    for head in [None, Some(0), Some(1)] {
        assert_eq!(
            exact.head_output_identity_error(head),
            Some(0.0),
            "{head:?}"
        );
    }
    // Head 1, row 0, dim 1 off by 1/2 (11/2 -> 6): the largest |z| is then 6, so the error
    // relative to the outputs' size is (1/2) / 6 = 1/12; head 0 alone is still exact.
    let mut z = PREDICTED;
    z[5] = 6.0;
    let off = identity_case(z);
    assert_eq!(off.head_output_identity_error(None), Some(0.5 / 6.0));
    assert_eq!(off.head_output_identity_error(Some(1)), Some(0.5 / 6.0));
    assert_eq!(off.head_output_identity_error(Some(0)), Some(0.0));
    // Head 0, row 1, dim 0 off by 1/2 (5/2 -> 2): the largest |z| of head 0 is 2, of both heads
    // 11/2; head 1 alone is exact.
    let mut z = PREDICTED;
    z[2] = 2.0;
    let off = identity_case(z);
    assert_eq!(off.head_output_identity_error(Some(0)), Some(0.5 / 2.0));
    assert_eq!(off.head_output_identity_error(None), Some(0.5 / 5.5));
    assert_eq!(off.head_output_identity_error(Some(1)), Some(0.0));
    // Outputs below 1 in size: the error is absolute. Everything scaled by 1/8 (the identity is
    // linear in t, v and z), head 1 row 1 dim 0 off by 1/16.
    let mut small = identity_case(PREDICTED.map(|x| x / 8.0));
    for a in [
        small.z_pretrained.data.iter_mut(),
        small.prefix_values.as_mut().unwrap().data.iter_mut(),
    ] {
        a.for_each(|x| *x /= 8.0);
    }
    small.z_prefixed.as_mut().unwrap().data[6] += 1.0 / 16.0;
    assert_eq!(small.head_output_identity_error(None), Some(1.0 / 16.0));
    assert_eq!(small.head_output_identity_error(Some(0)), Some(0.0));
    // No prefix: nothing to check.
    let mut none = identity_case(PREDICTED);
    none.with_prefix = None;
    assert_eq!(none.head_output_identity_error(None), None);
}

/// `max_renorm_diff` and `difference` on two heads of a 2 x 2 pattern that differ in one entry of
/// head 1 (row 1, column 0: 3/4 against 1/2).
#[test]
fn renormalized_minus_pretrained_per_head() {
    let mut c = identity_case(PREDICTED);
    c.renormalized = Some(arr(&[2, 2, 2], &[1.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.75, 0.25]));
    assert_eq!(c.max_renorm_diff(None), Some(0.25));
    assert_eq!(c.max_renorm_diff(Some(1)), Some(0.25));
    assert_eq!(c.max_renorm_diff(Some(0)), Some(0.0));
    let d = c.difference().unwrap();
    assert_eq!(d.shape, vec![2, 2, 2]);
    assert_eq!(d.data, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, -0.25]);
    assert_eq!(c.n_heads(), 2);
    c.renormalized = None;
    assert_eq!(c.max_renorm_diff(None), None);
    assert!(c.difference().is_none());
}

/// `renormalize`: the content columns of `[prefix | content]` divided by their row sum.
/// Rows `[1/2, 1/4, 1/4, 0]` and `[0, 1/8, 1/8, 3/4]` with P = 1 give `[1/2, 1/2, 0]` and
/// `[1/8, 1/8, 3/4]` (the second row has no prefix mass, so it is unchanged).
#[test]
fn renormalize_divides_the_content_columns_by_their_sum() {
    let dev = candle_core::Device::Cpu;
    let pattern = candle_core::Tensor::from_slice(
        &[0.5f32, 0.25, 0.25, 0.0, 0.0, 0.125, 0.125, 0.75],
        (1, 2, 4),
        &dev,
    )
    .unwrap();
    let r = capture::renormalize(&pattern, 1).unwrap();
    assert_eq!(r.dims(), &[1, 2, 3]);
    let got: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, vec![0.5, 0.5, 0.0, 0.125, 0.125, 0.75]);
}

/// A NaN is reported at its index in every dimension: flat index 23 of shape (2, 3, 4) is
/// (1, 2, 3); flat index 6 is (0, 1, 2).
#[test]
fn a_non_finite_value_is_named_by_its_index_per_dimension() {
    let mut a = Array::zeros(&[2, 3, 4]);
    assert!(capture::check_array_finite(3, "view", &a).is_ok());
    a.data[23] = f32::NAN;
    let msg = capture::check_array_finite(3, "view", &a)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("layer 3") && msg.contains("[1, 2, 3]"),
        "{msg}"
    );
    a.data[6] = f32::INFINITY;
    let msg = capture::check_array_finite(3, "view", &a)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[0, 1, 2]") && msg.contains("inf"), "{msg}");
    let named = vec![
        ("pretrained_L0".to_string(), Array::zeros(&[2])),
        ("with_prefix_L7".to_string(), a.clone()),
    ];
    let msg = capture::check_named_finite(&named).unwrap_err().to_string();
    assert!(
        msg.contains("layer 7") && msg.contains("with_prefix_L7"),
        "{msg}"
    );
    assert!(capture::check_named_finite(&named[..1]).is_ok());
}

mod prefix_checks {
    use super::arr;
    use prefixscope::arrays::Array;
    use prefixscope::prefix::{Prefix, PrefixKind, PrefixSizes};
    use prefixscope::Error;
    use std::path::Path;

    /// A model of 3 layers, d_model 4, 2 KV heads of size 2, context 6 (when bounded).
    struct Sizes(Option<usize>);
    impl PrefixSizes for Sizes {
        fn n_layers(&self) -> usize {
            3
        }
        fn d_model(&self) -> usize {
            4
        }
        fn n_kv_heads(&self) -> usize {
            2
        }
        fn head_dim(&self) -> usize {
            2
        }
        fn max_positions(&self) -> Option<usize> {
            self.0
        }
    }

    /// 0, 1, 2, ... as float32, in the given shape.
    fn counting(shape: &[usize], offset: f32) -> Array {
        let n = shape.iter().product::<usize>();
        arr(
            shape,
            &(0..n).map(|i| i as f32 + offset).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn shapes_lengths_and_kinds() {
        let s = Sizes(None);
        assert_eq!(
            Prefix::expected_shape(PrefixKind::SoftPrompt, 5, &s),
            vec![5, 4]
        );
        assert_eq!(
            Prefix::expected_shape(PrefixKind::Hidden, 5, &s),
            vec![3, 5, 4]
        );
        assert_eq!(
            Prefix::expected_shape(PrefixKind::KeyValue, 5, &s),
            vec![3, 2, 5, 2]
        );
        for (kind, label) in [
            (PrefixKind::SoftPrompt, "soft prompt"),
            (PrefixKind::Hidden, "per-layer prefix (paper)"),
            (PrefixKind::KeyValue, "key/value prefix"),
        ] {
            let z = Prefix::zeros(kind, 5, &s);
            assert_eq!(z.kind(), kind);
            assert_eq!(z.len(), 5);
            assert!(!z.is_empty());
            assert_eq!(kind.label(), label);
            assert!(z.check(&s, Path::new("p")).is_ok(), "{kind:?}");
            let n: usize = Prefix::expected_shape(kind, 5, &s).iter().product();
            // values_mut reaches every number (both arrays of a key/value prefix).
            let mut z = z;
            let per_array = z.values_mut().count();
            let arrays = if kind == PrefixKind::KeyValue { 2 } else { 1 };
            assert_eq!(per_array, n * arrays);
            z.values_mut().for_each(|x| *x = 1.5);
            assert!(z.values_mut().all(|x| *x == 1.5));
        }
        assert!(Prefix::SoftPrompt(Array::zeros(&[0, 4])).is_empty());
    }

    /// Layer `l` of a paper-form prefix `(3, P=2, 4)` holding 0, 1, 2, ...: rows `8 l .. 8 l + 8`;
    /// of a key/value prefix `(3, 2, 2, 2)`: `8 l .. 8 l + 8`, values offset by 100.
    #[test]
    fn one_layer_of_a_prefix_is_its_own_slice() {
        let flat =
            |t: candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let hidden = Prefix::Hidden(counting(&[3, 2, 4], 0.0));
        for l in 0..3 {
            let t = hidden.hidden_layer(l).unwrap().unwrap();
            assert_eq!(t.dims(), &[2, 4]);
            let want: Vec<f32> = (8 * l..8 * l + 8).map(|i| i as f32).collect();
            assert_eq!(flat(t), want, "layer {l}");
        }
        assert!(hidden.hidden_layer(3).is_err());
        assert!(hidden.key_value_layer(0).unwrap().is_none());
        // P = 3 as well, so that a product mistaken for a sum or a quotient shows.
        let kv = Prefix::KeyValue {
            keys: counting(&[3, 2, 3, 2], 0.0),
            values: counting(&[3, 2, 3, 2], 100.0),
        };
        for l in 0..3 {
            let (k, v) = kv.key_value_layer(l).unwrap().unwrap();
            assert_eq!(k.dims(), &[2, 3, 2]);
            let want: Vec<f32> = (12 * l..12 * l + 12).map(|i| i as f32).collect();
            assert_eq!(flat(k), want, "keys, layer {l}");
            let want: Vec<f32> = want.iter().map(|x| x + 100.0).collect();
            assert_eq!(flat(v), want, "values, layer {l}");
        }
        assert!(kv.key_value_layer(3).is_err());
        assert!(kv.hidden_layer(0).unwrap().is_none());
        let hidden3 = Prefix::Hidden(counting(&[3, 3, 4], 0.0));
        let t = hidden3.hidden_layer(2).unwrap().unwrap();
        assert_eq!(t.dims(), &[3, 4]);
        assert_eq!(flat(t)[0], 24.0);
    }

    #[test]
    fn check_refuses_each_mismatch_by_name() {
        let s = Sizes(Some(6));
        let msg = |p: &Prefix, s: &Sizes| p.check(s, Path::new("pf.npz")).unwrap_err().to_string();
        // Wrong shape.
        let m = msg(&Prefix::SoftPrompt(Array::zeros(&[2, 5])), &s);
        assert!(
            m.contains("soft_prompt") && m.contains("[2, 4]") && m.contains("[2, 5]"),
            "{m}"
        );
        // The values array is checked too, not only the keys.
        let m = msg(
            &Prefix::KeyValue {
                keys: Array::zeros(&[3, 2, 2, 2]),
                values: Array::zeros(&[3, 2, 2, 3]),
            },
            &s,
        );
        assert!(m.contains("values") && m.contains("[3, 2, 2, 3]"), "{m}");
        // A shape that disagrees with the number of values held.
        let mut short = Array::zeros(&[3, 2, 4]);
        short.data.pop();
        let m = msg(&Prefix::Hidden(short), &s);
        assert!(m.contains("prefix") && m.contains("[23]"), "{m}");
        // A NaN in the values array, at flat index 5.
        let mut values = Array::zeros(&[3, 2, 2, 2]);
        values.data[5] = f32::NAN;
        let p = Prefix::KeyValue {
            keys: Array::zeros(&[3, 2, 2, 2]),
            values,
        };
        let m = msg(&p, &s);
        assert!(m.contains("'values' element 5") && m.contains("NaN"), "{m}");
        // P = 0: refused by its shape (at least one virtual token).
        let m = msg(&Prefix::SoftPrompt(Array::zeros(&[0, 4])), &s);
        assert!(m.contains("[1, 4]") && m.contains("[0, 4]"), "{m}");
        // The context bound: P = 5 < 6 is accepted, P = 6 is refused; unbounded accepts any P.
        assert!(Prefix::SoftPrompt(Array::zeros(&[5, 4]))
            .check(&s, Path::new("p"))
            .is_ok());
        let m = msg(&Prefix::SoftPrompt(Array::zeros(&[6, 4])), &s);
        assert!(m.contains("P < 6") && m.contains("found 6"), "{m}");
        assert!(Prefix::SoftPrompt(Array::zeros(&[6, 4]))
            .check(&Sizes(None), Path::new("p"))
            .is_ok());
        assert!(matches!(
            Prefix::SoftPrompt(Array::zeros(&[6, 4])).check(&s, Path::new("p")),
            Err(Error::Input { .. })
        ));
    }

    /// Every kind written and read back, in each format, equals what was written.
    #[test]
    fn save_then_load_gives_the_same_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sizes(None);
        let prefixes = [
            Prefix::SoftPrompt(counting(&[2, 4], 0.5)),
            Prefix::Hidden(counting(&[3, 2, 4], -3.0)),
            Prefix::KeyValue {
                keys: counting(&[3, 2, 2, 2], 1.0),
                values: counting(&[3, 2, 2, 2], -7.0),
            },
        ];
        for p in &prefixes {
            for ext in ["npz", "safetensors"] {
                let path = dir.path().join(format!("{:?}.{ext}", p.kind()));
                p.save(&path).unwrap();
                let back = Prefix::load_for(&path, p.kind(), &s).unwrap();
                assert_eq!(&back, p, "{ext}");
            }
        }
        // A NaN is refused as soon as it is read, in either array.
        let mut bad = prefixes[2].clone();
        if let Prefix::KeyValue { values, .. } = &mut bad {
            values.data[3] = f32::INFINITY;
        }
        let path = dir.path().join("bad.npz");
        bad.save(&path).unwrap();
        let m = Prefix::load(&path, PrefixKind::KeyValue)
            .unwrap_err()
            .to_string();
        assert!(m.contains("'values' element 3"), "{m}");
    }
}

/// Which layers an edit can change, worked out for prefixes of 3 layers: the first layer holding
/// a changed number (a prefix array is laid out layer-major).
mod edits {
    use prefixscope::arrays::Array;
    use prefixscope::incremental::Edit;
    use prefixscope::prefix::Prefix;

    fn bump(a: &Array, flat: usize) -> Array {
        let mut b = a.clone();
        b.data[flat] += 1.0;
        b
    }

    /// The evaluator answers for the prompt it was made for (the app keeps it while the prompt
    /// stays the same).
    #[test]
    fn an_evaluator_keeps_its_prompt() {
        let ev = prefixscope::incremental::Evaluator::new(&[3, 1, 4]);
        assert_eq!(ev.ids(), &[3, 1, 4]);
    }

    #[test]
    fn an_edit_is_located_at_the_first_layer_it_touches() {
        let n = 3;
        // Paper form (3 layers, P = 2, d = 4): 8 numbers a layer, so flat 8..16 is layer 1.
        let h = Array::zeros(&[3, 2, 4]);
        let hidden = |a: &Array| Prefix::Hidden(a.clone());
        for (flat, layer) in [(0, 0), (7, 0), (8, 1), (15, 1), (16, 2), (23, 2)] {
            assert_eq!(
                Edit::between(Some(&hidden(&h)), Some(&hidden(&bump(&h, flat))), n),
                Edit::Layer(layer),
                "flat {flat}"
            );
        }
        // Unchanged: nothing below the top layer needs recomputing.
        assert_eq!(
            Edit::between(Some(&hidden(&h)), Some(&hidden(&h)), n),
            Edit::Layer(2)
        );
        assert_eq!(Edit::between(None, None, n), Edit::Layer(2));
        // Key/value (3 layers, 2 heads, P = 2, hd = 3): 12 numbers a layer; the earlier of the
        // keys' and the values' first changed layer.
        let k = Array::zeros(&[3, 2, 2, 3]);
        let kv = |k: &Array, v: &Array| Prefix::KeyValue {
            keys: k.clone(),
            values: v.clone(),
        };
        let base = kv(&k, &k);
        assert_eq!(Edit::between(Some(&base), Some(&base), n), Edit::Layer(2));
        assert_eq!(
            Edit::between(Some(&base), Some(&kv(&bump(&k, 30), &k)), n),
            Edit::Layer(2)
        );
        assert_eq!(
            Edit::between(Some(&base), Some(&kv(&k, &bump(&k, 13))), n),
            Edit::Layer(1)
        );
        assert_eq!(
            Edit::between(Some(&base), Some(&kv(&bump(&k, 25), &bump(&k, 13))), n),
            Edit::Layer(1)
        );
        assert_eq!(
            Edit::between(Some(&base), Some(&kv(&bump(&k, 11), &bump(&k, 13))), n),
            Edit::Layer(0)
        );
        // A soft prompt's change enters below every layer.
        let s = Array::zeros(&[2, 4]);
        let soft = |a: &Array| Prefix::SoftPrompt(a.clone());
        assert_eq!(
            Edit::between(Some(&soft(&s)), Some(&soft(&bump(&s, 5))), n),
            Edit::SoftPrompt
        );
        assert_eq!(
            Edit::between(Some(&soft(&s)), Some(&soft(&s)), n),
            Edit::Layer(2)
        );
        // A new kind, a new length, a prefix added or removed: everything.
        let longer = Array::zeros(&[3, 3, 4]);
        for (a, b) in [
            (Some(hidden(&h)), Some(hidden(&longer))),
            (Some(hidden(&h)), Some(soft(&Array::zeros(&[2, 4])))),
            (Some(hidden(&h)), None),
            (None, Some(hidden(&h))),
        ] {
            assert_eq!(Edit::between(a.as_ref(), b.as_ref(), n), Edit::All);
        }
    }
}

mod attention_helpers {
    use candle_core::{Device, Tensor};
    use prefixscope::model::attention;

    fn t3(data: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Grouped-query heads: 6 query heads over 2 KV heads, head h reads KV head h / 3.
    #[test]
    fn repeat_kv_gives_each_query_head_its_group() {
        let x = t3(&[10.0, 11.0, 20.0, 21.0], (2, 1, 2));
        let r = attention::repeat_kv(&x, 3).unwrap();
        assert_eq!(r.dims(), &[6, 1, 2]);
        assert_eq!(
            flat(&r),
            vec![10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 20.0, 21.0, 20.0, 21.0, 20.0, 21.0]
        );
    }

    /// Heads side by side: z `(2 heads, 2 rows, 3)` -> `(2, 6)`, row i = `[head 0 row i | head 1 row i]`.
    #[test]
    fn concat_heads_puts_the_heads_side_by_side() {
        let z = t3(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), (2, 2, 3));
        let c = attention::concat_heads(&z).unwrap();
        assert_eq!(c.dims(), &[2, 6]);
        assert_eq!(
            flat(&c),
            vec![0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 9.0, 10.0, 11.0]
        );
        let rows = attention::content_rows(
            &t3(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), (2, 3, 2)),
            2,
        )
        .unwrap();
        assert_eq!(flat(&rows), vec![2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
    }

    /// One head, P = 1, T = 2, scores `ln` of simple numbers so that the softmax is a ratio:
    /// row 0 sees `[prefix, c0]` with weights `1 : 3` -> `[1/4, 3/4, 0]`, its max score `ln 3`
    /// and its denominator relative to that max `1/3 + 1 = 4/3`;
    /// row 1 sees all three with weights `2 : 1 : 1` -> `[1/2, 1/4, 1/4]`, max `ln 2`, sum `2`.
    /// The future column of row 0 holds a huge score that must not count.
    #[test]
    fn causal_softmax_by_hand_with_its_row_max_and_denominator() {
        let ln = |x: f32| x.ln();
        let scores = t3(&[0.0, ln(3.0), 50.0, ln(2.0), 0.0, 0.0], (1, 2, 3));
        let (probs, max, sum) = attention::causal_softmax_stats(&scores, 1).unwrap();
        let want = [0.25, 0.75, 0.0, 0.5, 0.25, 0.25];
        for (g, w) in probs.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{probs:?}");
        }
        assert!(
            (max[0] - ln(3.0)).abs() < 1e-6 && (max[1] - ln(2.0)).abs() < 1e-6,
            "{max:?}"
        );
        assert!(
            (sum[0] - 4.0 / 3.0).abs() < 1e-6 && (sum[1] - 2.0).abs() < 1e-6,
            "{sum:?}"
        );
        let t = attention::causal_softmax(&scores, 1).unwrap();
        assert_eq!(t.dims(), &[1, 2, 3]);
        assert_eq!(flat(&t), probs);
        // Through `attend`: q = 1, keys chosen so that q k * scale gives the same scores
        // (scale 1/2, keys doubled), values 4, 8, 12 -> row 0 `[1/4, 3/4, 0]`, z = 1 + 6 = 7; row 1 weights `1 : 3 : 1`,
        // z = (4 + 24 + 12) / 5 = 8.
        let q = t3(&[1.0, 1.0], (1, 2, 1));
        let k = t3(&[0.0, 2.0 * ln(3.0), 0.0], (1, 3, 1));
        let v = t3(&[4.0, 8.0, 12.0], (1, 3, 1));
        let (z, p) = attention::attend(&q, &k, &v, 1, 0.5).unwrap();
        let pw = [0.25, 0.75, 0.0, 0.2, 0.6, 0.2];
        for (g, w) in flat(&p).iter().zip(pw) {
            assert!((g - w).abs() < 1e-6, "{:?}", flat(&p));
        }
        let zw = [7.0, 8.0];
        for (g, w) in flat(&z).iter().zip(zw) {
            assert!((g - w).abs() < 1e-5, "{:?}", flat(&z));
        }
    }
}

/// The prompt checks against a toy of 24 positions and a vocabulary of 10: ids 0..=9 and
/// prefix + content = 24 are accepted; id 10, 25 positions and an empty prompt are refused.
#[test]
fn prompt_checks_at_their_exact_bounds() {
    let dir = toy_common::tmp_dir("maths-core-ids");
    let path = dir.join("toy.safetensors");
    toy_common::write_toy(&path, &toy_common::cfg(1, 1, 8, false), 1);
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let ids: Vec<u32> = (0..20).map(|i| i % 10).collect();
    assert!(capture::check_ids(m, &ids, 4).is_ok());
    let msg = capture::check_ids(m, &ids, 5).unwrap_err().to_string();
    assert!(
        msg.contains("5 + 20 = 25") && msg.contains("<= 24"),
        "{msg}"
    );
    let msg = capture::check_ids(m, &[3, 9, 10], 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("index 2") && msg.contains("found 10"), "{msg}");
    assert!(capture::check_ids(m, &[9], 23).is_ok());
    assert!(capture::check_ids(m, &[], 0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The arrays `prefixscope attention` writes and the layer lookup, on a two-layer capture.
#[test]
fn a_capture_names_its_arrays_and_finds_its_layers() {
    let mut l3 = identity_case(PREDICTED);
    l3.layer = 3;
    l3.renormalized = Some(l3.pretrained.clone());
    let mut l5 = l3.clone();
    l5.layer = 5;
    l5.with_prefix = None;
    l5.renormalized = None;
    l5.prefix_mass = None;
    let cap = capture::Capture {
        token_ids: vec![5, 7],
        p: 2,
        layers: vec![l3, l5],
        logits_last_pretrained: vec![0.5, -1.0],
        logits_last_prefixed: Some(vec![2.0, 1.0]),
    };
    assert_eq!(cap.layer(3).map(|c| c.layer), Some(3));
    assert_eq!(cap.layer(5).map(|c| c.layer), Some(5));
    assert!(cap.layer(4).is_none());
    let named = cap.named_arrays();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_ids",
            "blocks.3.attn.hook_pattern",
            "blocks.3.attn.hook_pattern_renormalized",
            "blocks.3.attn.hook_prefix_mass",
            "blocks.3.attn.hook_pattern_pretrained",
            "blocks.5.attn.hook_pattern_pretrained",
            "logits_last_pretrained",
            "logits_last_prefixed"
        ]
    );
    let get = |n: &str| &named.iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(get("token_ids").data, vec![5.0, 7.0]);
    assert_eq!(get("token_ids").shape, vec![2]);
    assert_eq!(
        get("blocks.3.attn.hook_prefix_mass").data,
        vec![0.5, 0.5, 0.75, 0.25]
    );
    assert_eq!(get("logits_last_prefixed").data, vec![2.0, 1.0]);
    assert_eq!(get("logits_last_pretrained").shape, vec![2]);
}

/// The paper's per-layer prefix enters a layer as rows of its attention input at positions
/// `0..P`: so prefix rows equal to the content's own layer input must give, at every layer, exactly
/// the keys and values the content path gives those rows at positions `0..P` (the content path is
/// the one `tests/conformance.rs` checks against transformers). Run on every conformance family
/// (fused projections, biases, q/k norms, Gemma's scaled embedding, partial rotation), from the HF
/// folder and from the GGUF (dequantized, and kept in its blocks), and on a GPT toy (no positions:
/// `ln_1` and `c_attn` only).
#[test]
fn paper_prefix_rows_equal_to_the_content_give_the_contents_keys_and_values() {
    let variants = [
        "llama",
        "llama_bias",
        "llama3_scaling",
        "llama_linear",
        "llama_yarn",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma3",
        "phi3",
    ];
    // (path, keep the GGUF weights in their blocks): the quantized mode has its own projections.
    let mut paths: Vec<(std::path::PathBuf, bool)> = Vec::new();
    for v in variants {
        let d = common::repo_path("tests/fixtures/conformance").join(v);
        paths.push((d.join("hf"), false));
        paths.push((d.join("model.gguf"), false));
        paths.push((d.join("model.gguf"), true));
    }
    let dir = toy_common::tmp_dir("maths-core-gpt-kv");
    for skip_ln in [false, true] {
        let p = dir.join(format!("toy-{skip_ln}.safetensors"));
        toy_common::write_toy(&p, &toy_common::cfg(2, 2, 16, skip_ln), 5);
        paths.push((p, false));
    }
    for (path, quantized) in &paths {
        let ctl = prefixscope::load::LoadControl {
            quantized: *quantized,
            ..Default::default()
        };
        let loaded = prefixscope::load::load_with(path, &ctl).unwrap();
        assert_eq!(
            loaded.model.info().dtype.starts_with("quantized"),
            *quantized
        );
        let model = loaded.model.as_ref();
        let st = model.stepper().expect("every family steps layer by layer");
        let info = model.info().clone();
        let ids = [3u32, 1, 4, 1, 5];
        let (x, pos0) = st.embed_input(&ids, None).unwrap();
        assert_eq!(pos0, 0);
        let n = ids.len();
        let rows: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows.len(), n * info.d_model);
        for l in 0..info.n_layers {
            // Layer l of the prefix holds the content's rows; the other layers hold zeros.
            let mut a = Array::zeros(&[info.n_layers, n, info.d_model]);
            a.data[l * n * info.d_model..(l + 1) * n * info.d_model].copy_from_slice(&rows);
            let pf = prefixscope::prefix::Prefix::Hidden(a);
            let (pk, pv) = st.prefix_kv(l, Some(&pf)).unwrap().unwrap();
            let c = st.layer_content(l, &x, 0).unwrap();
            assert_eq!(
                pk.dims(),
                c.k.dims(),
                "{} ({quantized}) layer {l}",
                path.display()
            );
            assert_eq!(
                pv.dims(),
                c.v.dims(),
                "{} ({quantized}) layer {l}",
                path.display()
            );
            let d = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                common::max_abs_diff(&a, &b)
            };
            let (dk, dv) = (d(&pk, &c.k), d(&pv, &c.v));
            assert!(
                dk <= 1e-5 && dv <= 1e-5,
                "{} (quantized {quantized}) layer {l}: keys off by {dk:e}, values by {dv:e}",
                path.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two evaluator rules on a GPT toy, against a fresh run through `capture` (no caches): a
/// soft-prompt change reported as a one-layer edit still recomputes from the embedding (a soft
/// prompt enters below every layer), and a layer the model does not have is refused, not a panic.
#[test]
fn the_evaluator_recomputes_a_soft_prompt_edit_and_refuses_a_missing_layer() {
    use prefixscope::incremental::{Edit, Evaluator};
    use prefixscope::model::LayerSel;
    use prefixscope::prefix::{Prefix, PrefixKind};
    let dir = toy_common::tmp_dir("maths-core-evaluator");
    let path = dir.join("toy.safetensors");
    toy_common::write_toy(&path, &toy_common::cfg(3, 2, 16, false), 7);
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    let ids = [2u32, 6, 0, 1, 4];
    let mut pf = Prefix::zeros(PrefixKind::SoftPrompt, 2, &info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = (i % 7) as f32 * 0.3 - 0.9;
    }
    let mut ev = Evaluator::new(&ids);
    ev.update(m, Some(&pf), Edit::All, &[2]).unwrap();
    for x in pf.values_mut() {
        *x = -*x;
    }
    let got = ev.update(m, Some(&pf), Edit::Layer(2), &[2]).unwrap();
    let want = capture::capture(m, &ids, Some(&pf), &LayerSel::Only(vec![2])).unwrap();
    let (g, w) = (got.layer(2).unwrap(), want.layer(2).unwrap());
    let off = g
        .with_prefix
        .as_ref()
        .unwrap()
        .data
        .iter()
        .zip(&w.with_prefix.as_ref().unwrap().data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        off < 1e-5,
        "attention off by {off:e} after a soft-prompt edit"
    );
    // A new prefix length: a learned-position model's pretrained run has one placeholder per
    // prefix position, so its logits are those of the new length's run, not the cached ones.
    let longer = Prefix::zeros(PrefixKind::SoftPrompt, 4, &info);
    let got = ev.update(m, Some(&longer), Edit::All, &[2]).unwrap();
    let want = capture::capture(m, &ids, Some(&longer), &LayerSel::Only(vec![2])).unwrap();
    assert_eq!(got.logits_last_pretrained, want.logits_last_pretrained);
    let got = ev.update(m, Some(&pf), Edit::All, &[2]).unwrap();
    let want = capture::capture(m, &ids, Some(&pf), &LayerSel::Only(vec![2])).unwrap();
    assert_eq!(got.logits_last_pretrained, want.logits_last_pretrained);
    assert!(ev.update(m, Some(&pf), Edit::All, &[3]).is_err());
    assert!(ev.update(m, None, Edit::All, &[3]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The evaluator's rule that keeps the paper's checks genuine: a viewed layer whose output feeds a
/// recomputed layer is computed by the full pass's own softmax over `[prefix | content]`, so its
/// attention and head outputs are the full pass's bit for bit (only a viewed layer that nothing
/// recomputed reads takes the `(1 - a_i)` shortcut). On the two-layer conformance LLaMA with a
/// paper-form prefix: layer 0 viewed with layer 1, first from scratch, then after a layer-0 edit.
#[test]
fn a_viewed_layer_that_feeds_a_recomputed_one_is_the_full_pass_bit_for_bit() {
    use prefixscope::incremental::{Edit, Evaluator};
    use prefixscope::model::LayerSel;
    use prefixscope::prefix::{Prefix, PrefixKind};
    let path = common::repo_path("tests/fixtures/conformance/llama/hf");
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    assert_eq!(info.n_layers, 2);
    let ids = [3u32, 1, 4, 1, 5, 9];
    let mut pf = Prefix::zeros(PrefixKind::Hidden, 2, &info);
    for (i, x) in pf.values_mut().enumerate() {
        *x = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0;
    }
    let check = |got: &capture::Capture, pf: &Prefix, what: &str| {
        let want = capture::capture(m, &ids, Some(pf), &LayerSel::All).unwrap();
        let (g, w) = (got.layer(0).unwrap(), want.layer(0).unwrap());
        assert_eq!(
            g.with_prefix.as_ref().unwrap().data,
            w.with_prefix.as_ref().unwrap().data,
            "{what}: layer 0 attention"
        );
        assert_eq!(
            g.z_prefixed.as_ref().unwrap().data,
            w.z_prefixed.as_ref().unwrap().data,
            "{what}: layer 0 head outputs"
        );
    };
    let mut ev = Evaluator::new(&ids);
    let got = ev.update(m, Some(&pf), Edit::All, &[0, 1]).unwrap();
    check(&got, &pf, "from scratch");
    if let Prefix::Hidden(a) = &mut pf {
        a.data[3] += 0.5;
    }
    let got = ev.update(m, Some(&pf), Edit::Layer(0), &[0, 1]).unwrap();
    check(&got, &pf, "after a layer-0 edit");
    // A layer the model does not have is refused, not a panic (LLaMA indexes its blocks).
    assert!(ev.update(m, Some(&pf), Edit::All, &[2]).is_err());
    assert!(ev.update(m, None, Edit::All, &[2]).is_err());
}

/// A GPT toy's learned positions bound prefix + prompt wherever the stream is made. The stepper's
/// embedding (behind the evaluator, the overview and tuning, which reach it without
/// `capture::check_ids`) refuses 5 + 16 = 21 positions of the sorter's 20 in one line naming the
/// prompt length, for each prefix kind, file or tensor, and accepts 4 + 16 = 20 exactly (where a
/// bound on P x n = 64 or on P - n would refuse, wrap or panic).
#[test]
fn a_gpt_prefix_and_prompt_past_the_learned_positions_are_refused_where_the_stream_is_made() {
    use prefixscope::model::stepper::{full_run, tail_logits};
    use prefixscope::model::{LayerSel, PrefixTensors};
    use prefixscope::prefix::{Prefix, PrefixKind};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/sort-1l1h/ascending.safetensors");
    let loaded = prefixscope::load::load(&path).unwrap();
    let m = loaded.model.as_ref();
    let info = m.info().clone();
    assert_eq!(info.max_positions, Some(20));
    let st = m.stepper().unwrap();
    let ids = [1u32; 16];
    let want = "prompt length: expected prefix + content <= 20 positions (the model's context), \
                found 21";
    for kind in [
        PrefixKind::SoftPrompt,
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
    ] {
        let over = Prefix::zeros(kind, 5, &info);
        let got = full_run(st, &ids, Some(&over), &LayerSel::All)
            .unwrap_err()
            .to_string();
        assert_eq!(got, want, "{kind:?}");
        let t = PrefixTensors::from_prefix(&over).unwrap();
        let got = tail_logits(st, &ids, Some(&t), 1).unwrap_err().to_string();
        assert_eq!(got, want, "{kind:?} as tensors");
        let at = Prefix::zeros(kind, 4, &info);
        let run = full_run(st, &ids, Some(&at), &LayerSel::All).unwrap();
        assert_eq!((run.p, run.n), (4, 16), "{kind:?}");
        let t = PrefixTensors::from_prefix(&at).unwrap();
        let logits = tail_logits(st, &ids, Some(&t), 1).unwrap();
        assert_eq!(logits.dims(), &[1, info.vocab_size], "{kind:?} as tensors");
    }
    // Without a prefix the content alone: 21 refused, 20 accepted.
    let got = full_run(st, &[1u32; 21], None, &LayerSel::All)
        .unwrap_err()
        .to_string();
    assert_eq!(got, want);
    assert!(full_run(st, &[1u32; 20], None, &LayerSel::All).is_ok());
}

/// A prefix held as tensors reports its length from the axis that holds P in each kind, and is
/// empty exactly when P = 0; a GPT copied to float64 says so in its label (what the window shows).
#[test]
fn prefix_tensors_lengths_and_a_float64_copy_label() {
    use prefixscope::model::{PrefixTensors, Transformer};
    use prefixscope::prefix::{Prefix, PrefixKind};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/sort-1l1h/ascending.safetensors");
    let (g, _) = prefixscope::load::toy::load_gpt(&path).unwrap();
    let info = g.info().clone();
    for kind in [
        PrefixKind::SoftPrompt,
        PrefixKind::Hidden,
        PrefixKind::KeyValue,
    ] {
        for p in [0usize, 3] {
            let t = PrefixTensors::from_prefix(&Prefix::zeros(kind, p, &info)).unwrap();
            assert_eq!(t.len().unwrap(), p, "{kind:?}");
            assert_eq!(t.is_empty().unwrap(), p == 0, "{kind:?} P = {p}");
        }
    }
    assert_eq!(info.dtype, "f32");
    let g64 = g.to_dtype(candle_core::DType::F64).unwrap();
    assert_eq!(g64.info().dtype, "f64");
}

/// `attend_kept` sends tracked inputs (a tuned prefix, tuned queries) and float64 checks to the
/// differentiable attention, f32 inference to the blocked kernel: the gradient reaches a tracked
/// query or prefix, float64 stays float64, and every path gives the attention a naive f64 loop
/// gives (one head, one prefix column, two content rows; the values below are worked from it).
mod attend_kept_paths {
    use candle_core::{DType, Device, Tensor, Var};
    use prefixscope::model::stepper::{attend_kept, ContentKv};

    /// `z (1, 2, 2)` by a naive f64 loop: row `i` sees the prefix column and content `0..=i`.
    fn naive(q: &[f64], pk: &[f64], pv: &[f64], k: &[f64], v: &[f64], scale: f64) -> Vec<f64> {
        let keys = [pk, &k[0..2], &k[2..4]];
        let vals = [pv, &v[0..2], &v[2..4]];
        let mut z = vec![];
        for i in 0..2 {
            let qi = &q[2 * i..2 * i + 2];
            let s: Vec<f64> = keys[..i + 2]
                .iter()
                .map(|kk| scale * (qi[0] * kk[0] + qi[1] * kk[1]))
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let tot: f64 = e.iter().sum();
            for d in 0..2 {
                z.push(e.iter().zip(vals).map(|(ej, vj)| ej / tot * vj[d]).sum());
            }
        }
        z
    }

    const Q: [f64; 4] = [1.0, 0.5, -0.5, 2.0];
    const K: [f64; 4] = [0.25, 1.0, 2.0, -1.0];
    const V: [f64; 4] = [1.0, 2.0, -3.0, 0.5];
    const PK: [f64; 2] = [1.5, -0.5];
    const PV: [f64; 2] = [4.0, -2.0];

    fn t(x: &[f64], dt: DType) -> Tensor {
        Tensor::from_slice(x, (1, x.len() / 2, 2), &Device::Cpu)
            .unwrap()
            .to_dtype(dt)
            .unwrap()
    }

    fn flat(x: &Tensor) -> Vec<f64> {
        x.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn tracked_queries_keep_their_gradient() {
        let want = naive(&Q, &PK, &PV, &K, &V, 0.5);
        let q = Var::from_tensor(&t(&Q, DType::F32)).unwrap();
        let c = ContentKv::new(
            q.as_tensor().clone(),
            t(&K, DType::F32),
            t(&V, DType::F32),
            0.5,
        )
        .unwrap();
        let extra = (t(&PK, DType::F32), t(&PV, DType::F32));
        let (z, probs, _) = attend_kept(&c, Some(&extra), true).unwrap();
        close(&flat(&z), &want, 1e-5);
        assert!(probs.is_some());
        let g = z.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&q).is_some(), "the query's gradient was cut");
    }

    #[test]
    fn a_tracked_prefix_keeps_its_gradient() {
        let want = naive(&Q, &PK, &PV, &K, &V, 0.5);
        let c =
            ContentKv::new(t(&Q, DType::F32), t(&K, DType::F32), t(&V, DType::F32), 0.5).unwrap();
        let pk = Var::from_tensor(&t(&PK, DType::F32)).unwrap();
        let extra = (pk.as_tensor().clone(), t(&PV, DType::F32));
        let (z, _, _) = attend_kept(&c, Some(&extra), false).unwrap();
        close(&flat(&z), &want, 1e-5);
        let g = z.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&pk).is_some(), "the prefix key's gradient was cut");
    }

    #[test]
    fn float64_stays_float64_and_f32_inference_agrees() {
        let want = naive(&Q, &PK, &PV, &K, &V, 0.5);
        let c =
            ContentKv::new(t(&Q, DType::F64), t(&K, DType::F64), t(&V, DType::F64), 0.5).unwrap();
        let extra = (t(&PK, DType::F64), t(&PV, DType::F64));
        let (z, _, _) = attend_kept(&c, Some(&extra), true).unwrap();
        assert_eq!(z.dtype(), DType::F64);
        close(&flat(&z), &want, 1e-12);
        // Plain f32: the blocked kernel, same numbers to f32 rounding.
        let c =
            ContentKv::new(t(&Q, DType::F32), t(&K, DType::F32), t(&V, DType::F32), 0.5).unwrap();
        let extra = (t(&PK, DType::F32), t(&PV, DType::F32));
        let (z, probs, _) = attend_kept(&c, Some(&extra), false).unwrap();
        assert!(probs.is_none());
        close(&flat(&z), &want, 1e-5);
    }
}
