//! The constructions generate what their virtual tokens hold, through the model's own forward pass.

mod common;

use prefixscope::construct::model::Construction;
use prefixscope::construct::{self, Kind, V};
use prefixscope::model::{LayerSel, Transformer};
use prefixscope::prefix::Prefix;
use rand::{Rng, SeedableRng};

fn random_string(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| construct::id_char(rng.random_range(0..V as u32)))
        .collect()
}

/// (a): 200 random 20-character targets, each generated exactly (the forward pass is causal), with a
/// margin close to the ideal 1/(2V): at L = 20, T = 50 each head leaks about 19 e^{-50/sqrt(20)} = 2.6e-4
/// of its attention off its target, which moves `z` by at most twice that.
#[test]
fn unconditional_generates_200_random_targets() {
    let model = construct::unconditional(20, 50.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let half = 0.5 / V as f64;
    let mut worst = f64::INFINITY;
    for _ in 0..200 {
        let target = random_string(&mut rng, 20);
        let prefix = construct::unconditional_prefix(&model, &target).unwrap();
        let (text, g) = construct::generate_text(&model, &prefix, "", None).unwrap();
        assert_eq!(text, target);
        assert_eq!(g.ids.len(), 20);
        let m = g.margin();
        assert!(m > half - 6e-4 && m <= half + 1e-12, "margin {m}");
        worst = worst.min(m);
    }
    assert!(worst > 0.0);
}

/// The notebook's example, step by step: "I", "I ", "I l", ... come from one virtual token.
#[test]
fn unconditional_i_love_transformers() {
    let b = construct::build_target("I love transformers!").unwrap();
    let out = construct::run_cases(&b).unwrap();
    assert_eq!(out[0].generated, "I love transformers!");
    assert!(out[0].margin > 0.0);
    // A short target is padded with spaces: the model keeps writing spaces after it.
    let b = construct::build_target("Hi").unwrap();
    let (text, _) = construct::generate_text(&b.model, &b.prefix, "", None).unwrap();
    assert_eq!(text, format!("Hi{}", " ".repeat(18)));
}

/// The causal mask is real: the attention above the diagonal is zero, and the prefix column carries
/// almost all of head "first"'s attention from every content row.
#[test]
fn unconditional_attention_is_causal_and_reads_the_virtual_token() {
    let b = construct::build_target("abcdefghij").unwrap();
    let ids = construct::encode("t", "abcdefghi").unwrap();
    let run = b
        .model
        .forward(&ids, Some(&b.prefix), &LayerSel::All)
        .unwrap();
    let pat = run.layers[0].pattern.to_vec3::<f32>().unwrap(); // (H, n, p+n)
    assert_eq!((pat.len(), pat[0].len(), pat[0][0].len()), (2, 9, 10));
    for (h, rows) in pat.iter().enumerate() {
        for (i, row) in rows.iter().enumerate() {
            for (j, &x) in row.iter().enumerate().skip(i + 2) {
                assert_eq!(x, 0.0, "head {h} row {i} col {j}");
            }
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
    // head 0 = "pos" (self), head 1 = "first" (position 0).
    for i in 0..9 {
        assert!(pat[0][i][i + 1] > 0.999);
        assert!(pat[1][i][0] > 0.999);
    }
}

/// (b): the case-flip map, all 52 letters.
#[test]
fn conditional_case_flip_all_52_letters() {
    let map = construct::parse_map("case-flip").unwrap();
    assert_eq!(map.len(), 52);
    let b = construct::build_map(&map, None).unwrap();
    assert_eq!(b.kind, Kind::Conditional);
    let out = construct::run_cases(&b).unwrap();
    assert_eq!(out.len(), 52);
    for o in &out {
        assert_eq!(o.generated, o.expected, "input {}", o.input);
        let flipped: String = o
            .input
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        assert_eq!(o.generated, flipped);
        assert!(o.margin > 0.5 / V as f64 - 1e-6, "margin {}", o.margin);
    }
    // One virtual token of V + N = 96 numbers holds the whole map.
    assert_eq!(b.prefix.len(), 1);
    assert_eq!(b.model.info().d_model, 96);
}

/// (b) with a random map over all 94 characters.
#[test]
fn conditional_random_full_map() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let map: Vec<(String, String)> = (0..V as u32)
        .map(|c| {
            (
                construct::id_char(c).to_string(),
                construct::id_char(rng.random_range(0..V as u32)).to_string(),
            )
        })
        .collect();
    let b = construct::build_map(&map, None).unwrap();
    for o in construct::run_cases(&b).unwrap() {
        assert_eq!(o.generated, o.expected, "input {:?}", o.input);
    }
}

/// (c): ten virtual tokens, each user character answered with its own string.
#[test]
fn long_responses() {
    let map = construct::parse_map("b=lueberries,a=pple pie,c=herry,z=ebra\\, a\\=b").unwrap();
    assert_eq!(map[3], ("z".to_string(), "ebra, a=b".to_string()));
    let b = construct::build_map(&map, None).unwrap();
    assert_eq!(b.kind, Kind::Long);
    assert_eq!(b.prefix.len(), 10);
    for o in construct::run_cases(&b).unwrap() {
        assert_eq!(o.generated, o.expected, "input {:?}", o.input);
        assert!(o.margin > 0.5 / V as f64 - 1e-6);
    }
    // Filling the positions: the response padded with spaces to N0 = 10 characters.
    let (text, g) = construct::generate_text(&b.model, &b.prefix, "b", None).unwrap();
    assert_eq!(text, "lueberries");
    assert_eq!(g.ids.len(), 10);
    let (text, _) = construct::generate_text(&b.model, &b.prefix, "c", None).unwrap();
    assert_eq!(text, "herry     ");
}

/// (d): a random two-token map over A..J, all 100 pairs, unpacked by the model's MLPs.
#[test]
fn two_token_random_map_100_percent() {
    for seed in [0u64, 1, 2] {
        let map = construct::parse_map(&format!("random2:{seed}")).unwrap();
        assert_eq!(map.len(), 100);
        let b = construct::build_map(&map, None).unwrap();
        assert_eq!(b.kind, Kind::TwoToken);
        let out = construct::run_cases(&b).unwrap();
        let correct = out.iter().filter(|o| o.generated == o.expected).count();
        assert_eq!(correct, 100, "seed {seed}");
        // The unpacking is exact: z is id/V up to the f32 rounding of the 1/V weights: the full half cell.
        for o in &out {
            assert!(
                (o.margin - 0.5 / V as f64).abs() < 1e-7,
                "margin {}",
                o.margin
            );
        }
        // The whole map (100 entries) lives in 20 coordinates of one virtual token.
        assert_eq!(b.prefix.len(), 1);
        assert_eq!(b.content, 0..20);
    }
}

/// (d)'s virtual token really holds the map: changing one entry changes that pair's answer and no other.
#[test]
fn two_token_one_entry_changes_one_answer() {
    let mut map = construct::random_two_token_map(5);
    let b0 = construct::build_map(&map, None).unwrap();
    let i = map.iter().position(|(k, _)| k == "CH").unwrap();
    map[i].1 = if map[i].1 == "J" {
        "A".into()
    } else {
        "J".into()
    };
    let b1 = construct::build_map(&map, None).unwrap();
    let o0 = construct::run_cases(&b0).unwrap();
    let o1 = construct::run_cases(&b1).unwrap();
    for (a, b) in o0.iter().zip(&o1) {
        if a.input == "CH" {
            assert_ne!(a.generated, b.generated);
            assert_eq!(b.generated, map[i].1);
        } else {
            assert_eq!(a.generated, b.generated, "pair {}", a.input);
        }
    }
}

/// A hard token cannot do what the virtual token does: with the real token of each character at
/// position 0 instead, construction (a) writes the same thing every time.
#[test]
fn capacity_hard_against_soft() {
    let c = construct::capacity_construction(300, 1).unwrap();
    assert_eq!(c.hard_tried, 94);
    assert_eq!(c.hard_distinct, 1);
    assert_eq!(c.soft_tried, 300);
    assert_eq!(c.soft_distinct, 300);
}

/// Saving and loading through `load::load` gives the same model.
#[test]
fn save_and_load_round_trip() {
    let dir = common::temp_dir("con");
    for b in [
        construct::build_target("round trip!").unwrap(),
        construct::build_map(&construct::random_two_token_map(9), None).unwrap(),
    ] {
        let path = dir.join(format!("{}.safetensors", b.kind.name()));
        b.model.save(&path).unwrap();
        let loaded = prefixscope::load::load(&path).unwrap();
        assert_eq!(loaded.model.info(), b.model.info());
        let back = Construction::load_file(&path).unwrap();
        assert_eq!(back.config(), b.model.config());
        for o in construct::run_cases(&Construction_built(back, &b)).unwrap() {
            assert_eq!(o.generated, o.expected);
        }
        // Through the trait object too: the last logits agree.
        let ids = construct::encode("t", &b.cases[0].input).unwrap();
        let r0 = b
            .model
            .forward(&ids, Some(&b.prefix), &LayerSel::All)
            .unwrap();
        let r1 = loaded
            .model
            .forward(&ids, Some(&b.prefix), &LayerSel::All)
            .unwrap();
        assert_eq!(
            r0.logits_last.to_vec1::<f32>().unwrap(),
            r1.logits_last.to_vec1::<f32>().unwrap()
        );
        assert_eq!(loaded.tokenizer.decode(&[41]), "I");
    }
    let pfx = dir.join("p.safetensors");
    let b = construct::build_target("xyz").unwrap();
    b.prefix.save(&pfx).unwrap();
    let p2 = Prefix::load(&pfx, prefixscope::prefix::PrefixKind::SoftPrompt).unwrap();
    assert_eq!(p2, b.prefix);
}

#[allow(non_snake_case)]
fn Construction_built(model: Construction, b: &construct::Built) -> construct::Built {
    construct::Built {
        kind: b.kind,
        model,
        prefix: b.prefix.clone(),
        content: b.content.clone(),
        cases: b.cases.clone(),
    }
}

/// A virtual token equal to a token's embedding row is that token: the model adds the position to a
/// soft-prompt row exactly as to a real token (the basis of the hard-versus-soft comparison).
#[test]
fn soft_prompt_of_an_embedding_row_is_the_hard_token() {
    let model = construct::long(10, 100.0);
    let ids = construct::encode("t", "xyz").unwrap();
    for v in [0u32, 33, 93] {
        let row = model.token_embedding(v).unwrap();
        let d = row.len();
        let soft = Prefix::SoftPrompt(prefixscope::arrays::Array {
            shape: vec![1, d],
            data: row,
        });
        let a = model.forward(&ids, Some(&soft), &LayerSel::All).unwrap();
        let mut hard_ids = vec![v];
        hard_ids.extend(&ids);
        let b = model.forward(&hard_ids, None, &LayerSel::All).unwrap();
        assert_eq!(
            a.logits_last.to_vec1::<f32>().unwrap(),
            b.logits_last.to_vec1::<f32>().unwrap()
        );
        // The pretrained run puts placeholder token 0 where the prefix was.
        let pre = model.pretrained(&ids, 1, &LayerSel::All).unwrap();
        assert_eq!(pre.p, 1);
        if v == 0 {
            assert_eq!(
                pre.logits_last.to_vec1::<f32>().unwrap(),
                a.logits_last.to_vec1::<f32>().unwrap()
            );
        }
    }
}

/// The generic counting protocol runs through the trait: on construction (c) the 94 embedding rows give
/// at most 94 outputs, and random Gaussian vectors give more.
#[test]
fn capacity_model_on_a_construction() {
    let model = construct::long(10, 100.0);
    let c = construct::capacity_model(&model, "long", 200, 5, &[0], 1.0, 3).unwrap();
    assert_eq!(c.hard_tried, 94);
    assert_eq!(c.steps, 5);
    assert!(c.hard_distinct <= 94);
    assert!(c.soft_distinct > c.hard_distinct, "{c:?}");
}

/// The paper's per-layer form: a hidden-state row replaces the whole attention input, so the virtual
/// token plus its position, given as a `Prefix::Hidden`, acts exactly like the soft prompt.
#[test]
fn hidden_prefix_matches_soft_prompt_plus_position() {
    let b = construct::build_target("per-layer").unwrap();
    let Prefix::SoftPrompt(a) = &b.prefix else {
        panic!()
    };
    let mut h = a.clone();
    h.data[20] += 1.0; // position 0's one-hot, which the model adds to a soft prompt itself
    h.shape = vec![1, 1, 40];
    let hidden = Prefix::Hidden(h);
    let (t1, _) = construct::generate_text(&b.model, &hidden, "", Some(9)).unwrap();
    assert_eq!(t1, "per-layer");
    // Without the position the virtual token is not read by head "first": spaces come out.
    let mut h0 = a.clone();
    h0.shape = vec![1, 1, 40];
    let (t0, _) = construct::generate_text(&b.model, &Prefix::Hidden(h0), "", Some(9)).unwrap();
    assert_ne!(t0, "per-layer");
    // Non-finite coordinates (a slider gone wrong) are refused by name.
    let mut bad = a.clone();
    bad.data[3] = f32::NAN;
    let e = construct::generate_text(&b.model, &Prefix::SoftPrompt(bad), "", None).unwrap_err();
    assert!(e.one_line().contains("element 3"), "{}", e.one_line());
}

/// What the GUI's Construction mode does: build, edit one coordinate of the virtual token, generate,
/// and capture the attention views of the result.
#[test]
fn edit_a_coordinate_then_view() {
    let mut b = construct::build_target("cat").unwrap();
    let Prefix::SoftPrompt(a) = &mut b.prefix else {
        panic!()
    };
    // Coordinate 0 holds 'c' = 99 - 32 = 67 as 67/94; set it to 'b'.
    assert!((a.data[0] - 67.0 / 94.0).abs() < 1e-7);
    a.data[0] = 66.0 / 94.0;
    let (text, g) = construct::generate_text(&b.model, &b.prefix, "", Some(3)).unwrap();
    assert_eq!(text, "bat");
    // Halfway between two characters the margin collapses to (almost) nothing.
    let Prefix::SoftPrompt(a) = &mut b.prefix else {
        panic!()
    };
    a.data[1] = (65.5 / 94.0) as f32;
    let (_, g2) = construct::generate_text(&b.model, &b.prefix, "", Some(3)).unwrap();
    assert!(
        g2.margins[1] < 1e-3 && g.margins[1] > 4e-3,
        "{:?} {:?}",
        g.margins,
        g2.margins
    );
    let ids = construct::content_for_views(&b.model, &b.prefix, "", &"x".repeat(25)).unwrap();
    assert_eq!(ids.len(), 19);
    let cap =
        prefixscope::capture::capture(&b.model, &ids, Some(&b.prefix), &LayerSel::All).unwrap();
    let l0 = &cap.layers[0];
    assert_eq!(l0.with_prefix.as_ref().unwrap().shape, vec![2, 19, 20]);
    // Head "first" puts (almost) all its attention on the virtual token.
    let mass = l0.prefix_mass.as_ref().unwrap();
    assert!(mass.data[19..38].iter().all(|&m| m > 0.999));
}

/// The GUI's incremental evaluator runs on a construction (full recompute: it has no layer stepper) and
/// agrees with a plain capture after a slider edit.
#[test]
fn incremental_evaluator_on_a_construction() {
    use prefixscope::incremental::{Edit, Evaluator};
    let mut b = construct::build_target("slider").unwrap();
    let ids = construct::content_for_views(&b.model, &b.prefix, "", "slide").unwrap();
    let mut ev = Evaluator::new(&ids);
    let c0 = ev
        .update(&b.model, Some(&b.prefix), Edit::All, &[0])
        .unwrap();
    let Prefix::SoftPrompt(a) = &mut b.prefix else {
        panic!()
    };
    a.data[5] = 0.9; // the coordinate the last position (5) reads
    let c1 = ev
        .update(&b.model, Some(&b.prefix), Edit::SoftPrompt, &[0])
        .unwrap();
    let full =
        prefixscope::capture::capture(&b.model, &ids, Some(&b.prefix), &LayerSel::All).unwrap();
    assert_eq!(c1.layers[0].with_prefix, full.layers[0].with_prefix);
    assert_eq!(c1.logits_last_prefixed, full.logits_last_prefixed);
    assert_ne!(c0.logits_last_prefixed, c1.logits_last_prefixed);
    // Layer 0 is the first prefixed layer: renormalized equals pretrained up to rounding.
    assert!(c1.layers[0].max_renorm_diff(None).unwrap() < 1e-5);
}
