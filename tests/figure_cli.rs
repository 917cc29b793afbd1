//! `prefixscope render` and `prefixscope figures` through the built binary: SmolLM2 (required, as in
//! every test that uses it: `.ci/fetch-smollm2.sh` caches it) and the toy models models/ ships.

mod common;

use prefixscope::arrays::{read_arrays, write_arrays, Array};
use prefixscope::figure::raster;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefixscope"))
}

fn tempdir(tag: &str) -> common::Scratch {
    common::temp_dir(&format!("figcli-{tag}"))
}

fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2), "exit status 2 on bad input");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "{err}");
    last
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).expect("decodable PNG").to_rgba8();
    let ink = img.pixels().filter(|p| p.0[..3] != [255, 255, 255]).count();
    assert!(ink > 1000, "{} is blank", path.display());
    (img.width(), img.height())
}

#[test]
fn render_rejects_bad_input_with_one_line() {
    let dir = tempdir("bad");
    let out = bin()
        .args([
            "render",
            "--model",
            "/nonexistent/model.gguf",
            "--ids",
            "1,2",
        ])
        .args(["--layer", "0", "--head", "0", "--out"])
        .arg(dir.join("x.svg"))
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("/nonexistent/model.gguf"));
    let out = bin()
        .args([
            "render",
            "--model",
            "/nonexistent/model.gguf",
            "--ids",
            "1,2",
        ])
        .args([
            "--layer", "0", "--head", "0", "--panels", "raw,heat", "--out",
        ])
        .arg(dir.join("x.svg"))
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("'heat'"));
    let existing = dir.join("exists.png");
    std::fs::write(&existing, b"x").unwrap();
    let out = bin()
        .args([
            "render",
            "--model",
            "/nonexistent/model.gguf",
            "--ids",
            "1,2",
        ])
        .args(["--layer", "0", "--head", "0", "--out"])
        .arg(&existing)
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("existing file"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"x");
}

#[test]
fn figures_without_models_says_which_are_missing() {
    let dir = tempdir("nomodels");
    let empty = dir.join("models");
    std::fs::create_dir_all(&empty).unwrap();
    let out = bin()
        .args(["figures", "--no-smollm2", "--models"])
        .arg(&empty)
        .arg("--out")
        .arg(dir.join("figs"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped figure (a)"), "{err}");
    assert!(err.contains("1 layer, 1 head, task ascending"), "{err}");
    assert!(err.contains("skipped figure (c)"), "{err}");
    one_line_error(&out);
    let captions = std::fs::read_to_string(dir.join("figs/captions.md")).unwrap();
    assert!(captions.contains("## Not generated"));
}

#[test]
fn render_smollm2_with_a_soft_prompt() {
    let model = common::smollm2();
    let dir = tempdir("render");
    // A one-vector soft prompt: the embedding of token 55 ("X" or whatever it is), taken from the
    // model through the library, so the prefix is a real input vector.
    let loaded = prefixscope::load::load(&model).unwrap();
    let emb = loaded.model.token_embedding(55).unwrap();
    let sp = dir.join("sp.npy");
    write_arrays(
        &sp,
        &[(
            "array",
            &Array {
                shape: vec![1, emb.len()],
                data: emb,
            },
        )],
    )
    .unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let o = bin()
            .args(["render", "--model"])
            .arg(&model)
            .args(["--text", "The cat sat on the mat.", "--soft-prompt"])
            .arg(&sp)
            .args(["--layer", "0", "--head", "2", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let svg = dir.join("f.svg");
    let png2 = dir.join("f2.png");
    let png4 = dir.join("f4.png");
    let npz = dir.join("f.npz");
    run(&svg, &[]);
    run(&png2, &[]);
    run(&png4, &["--scale", "4"]);
    run(&npz, &[]);
    let text = std::fs::read_to_string(&svg).unwrap();
    let tree = raster::parse(&text).unwrap();
    let (w, h) = (tree.size().width(), tree.size().height());
    assert_eq!(
        png_size(&png2),
        ((w * 2.0).ceil() as u32, (h * 2.0).ceil() as u32)
    );
    assert_eq!(
        png_size(&png4),
        ((w * 4.0).ceil() as u32, (h * 4.0).ceil() as u32)
    );
    for want in [
        "Renormalized over content",
        "[prefix]",
        "mat",
        "Layer 0, head 2",
    ] {
        assert!(text.contains(want), "'{want}' missing from the SVG");
    }
    // The data: in layer 0 renormalized equals pretrained, and the raw content columns equal the
    // pretrained rows scaled by 1 - prefix mass.
    let a = read_arrays(&npz).unwrap();
    let raw = &a["raw_L0_H2"];
    let ren = &a["renormalized_L0_H2"];
    let pre = &a["pretrained_L0_H2"];
    let n = pre.shape[0];
    assert_eq!(raw.shape, vec![n, n + 1]);
    for i in 0..n {
        let mass = raw.data[i * (n + 1)];
        for j in 0..n {
            let r = raw.data[i * (n + 1) + 1 + j];
            assert!((r - pre.data[i * n + j] * (1.0 - mass)).abs() < 1e-5);
            assert!((ren.data[i * n + j] - pre.data[i * n + j]).abs() < 1e-5);
        }
    }
}

#[test]
fn figures_regenerates_what_the_models_allow() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    // The repository ships the models of figures (a)-(c) (models/manifest.json lists them): every
    // figure must be made, not only those a lookup happens to find.
    let manifest = std::fs::read_to_string(models.join("manifest.json")).unwrap();
    for f in [
        "sort-1l1h/ascending.safetensors",
        "sort-1l1h/finetuned-descending.safetensors",
        "sort-1l1h/prefix-descending.safetensors",
        "mix-1l4h256/random.safetensors",
        "mix-1l4h256/prefix-ascending.safetensors",
        "mix-1l4h256/prefix-descending.safetensors",
        "mix-1l4h256/prefix-add1.safetensors",
        "mix-1l4h256/prefix-add2.safetensors",
    ] {
        assert!(manifest.contains(f), "{f} not in models/manifest.json");
        assert!(models.join(f).is_file(), "models/{f} is missing");
    }
    let smol = common::smollm2();
    let dir = tempdir("all");
    let out = dir.join("figs");
    let t = std::time::Instant::now();
    let o = bin()
        .args(["figures", "--models"])
        .arg(&models)
        .arg("--smollm2")
        .arg(&smol)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    eprintln!("figures took {:.1} s\n{err}", t.elapsed().as_secs_f32());
    assert!(!err.contains("skipped"), "a figure was skipped: {err}");
    let expect = [
        "a_sorter",
        "b_four_task_raw",
        "b_four_task_renormalized",
        "c_bias",
        "d_smollm2",
        "e_tune_smollm2",
    ];
    let captions = std::fs::read_to_string(out.join("captions.md")).unwrap();
    for name in &expect {
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        let png = out.join(format!("{name}.png"));
        // The PNG the command wrote is exactly the SVG it wrote, rasterized.
        let fresh = raster::rasterize(&svg, 2.0).unwrap();
        let written = raster::load_png(&png).unwrap();
        assert_eq!(fresh.data(), written.data(), "{name}: SVG and PNG differ");
        png_size(&png);
        let pdf = std::fs::read(out.join(format!("{name}.pdf"))).unwrap();
        assert!(pdf.starts_with(b"%PDF-"), "{name}.pdf");
        assert!(captions.contains(&format!("## {name}")), "{name} caption");
        let data: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert!(data.is_object());
    }
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("d_smollm2.json")).unwrap())
            .unwrap();
    // Layer 0: the paper's identities hold to float precision.
    assert!(d["max_abs_raw_minus_scaled"].as_f64().unwrap() < 1e-5);
    assert!(d["max_abs_renormalized_minus_pretrained"].as_f64().unwrap() < 1e-5);
    let svg = std::fs::read_to_string(out.join("d_smollm2.svg")).unwrap();
    assert!(svg.contains("TABLE") && svg.contains("Pretrained \u{00d7} (1 \u{2212} prefix mass)"));
    // Figure (e): the tuned prefix makes the target likely, layer 0 stays pretrained at every check,
    // and no layer-0 row changes its most-attended content token.
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("e_tune_smollm2.json")).unwrap())
            .unwrap();
    let p = e["p_target"].as_array().unwrap();
    assert!(p.last().unwrap().as_f64().unwrap() > 0.9, "p(target) {p:?}");
    for c in e["checks"].as_array().unwrap() {
        assert!(
            c["layer0_max_abs_renorm_minus_pretrained"]
                .as_f64()
                .unwrap()
                < 1e-5
        );
    }
    assert_eq!(e["argmax_changes_layer0"], 0);
    let b: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("b_four_task_renormalized.json")).unwrap(),
    )
    .unwrap();
    assert!(b["max_abs_renormalized_minus_pretrained"].as_f64().unwrap() < 1e-5);
    check_bias_figure_against_reference(&out.join("c_bias.json"));
    // A second run refuses to overwrite; --force replaces.
    let o = bin()
        .args(["figures", "--no-smollm2", "--models"])
        .arg(&models)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(one_line_error(&o).contains("existing file"));
}

/// Figure (c)'s numbers against an independent float64 NumPy implementation of the four-task toy's
/// layer 0 (`scripts/make_bias_figure_reference.py`, output `tests/fixtures/bias_figure/`): the
/// attention block output at the last input position in dimensions 143 and 212, without a prefix and
/// with each task prefix, for the figure's 20 inputs (checked to be the same), to 1e-5; and each
/// prefix's mean shift length in the full 256 dimensions, as the caption states it, to 1e-5 relative.
fn check_bias_figure_against_reference(json: &Path) {
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bias_figure/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got["dims"], want["dims"], "bias plot dimensions");
    assert_eq!(got["inputs"], want["inputs"], "the figure's inputs");
    let points = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(
            d < 1e-5,
            "figure (c), {what}: max abs {d:e} against the reference"
        );
    };
    close(
        &points(&got["without_prefix"]),
        &points(&want["without_prefix"]),
        "without prefix",
    );
    let with = got["with_prefix"].as_array().unwrap();
    assert_eq!(with.len(), 4, "one series per task prefix");
    for series in with {
        let task = series["task"].as_str().unwrap();
        close(
            &points(&series["points"]),
            &points(&want["with_prefix"][task]),
            &format!("{task} prefix"),
        );
        let (g, w) = (
            series["mean_shift_length"].as_f64().unwrap(),
            want["mean_shift_length"][task].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 1e-5 * w, "{task}: mean shift {g} vs {w}");
    }
}
