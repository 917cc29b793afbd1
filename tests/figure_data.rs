//! Data export: the matrices behind a figure, written as CSV, NPY, NPZ and JSON, read back equal to
//! what the library computed from a capture (and to the paper's formulas computed here by hand).

mod common;

use prefixscope::arrays::{read_arrays, Array};
use prefixscope::capture::{Capture, LayerCapture};
use prefixscope::figure::{export_views, view_heatmap, views_rgba, ExportOptions, ViewKind};

/// A capture with a prefix of length 2 over 4 content tokens and 2 heads, built by hand from logits
/// so that every row is a proper causal softmax; the pretrained attention is the renormalized one
/// perturbed in head 1, so the difference view is not all zeros.
fn capture() -> Capture {
    let (h, n, p) = (2usize, 4usize, 2usize);
    let mut with = vec![0f32; h * n * (p + n)];
    let mut renorm = vec![0f32; h * n * n];
    let mut mass = vec![0f32; h * n];
    for hh in 0..h {
        for i in 0..n {
            let logits: Vec<f32> = (0..p + n)
                .map(|j| {
                    if j >= p && j - p > i {
                        f32::NEG_INFINITY
                    } else {
                        ((hh * 7 + i * 3 + j * 5) % 11) as f32 * 0.3
                    }
                })
                .collect();
            let z: f32 = logits.iter().map(|l| l.exp()).sum();
            for j in 0..p + n {
                with[(hh * n + i) * (p + n) + j] = logits[j].exp() / z;
            }
            let row = &with[(hh * n + i) * (p + n)..(hh * n + i + 1) * (p + n)];
            mass[hh * n + i] = row[..p].iter().sum();
            let content: f32 = row[p..].iter().sum();
            for j in 0..n {
                renorm[(hh * n + i) * n + j] = row[p + j] / content;
            }
        }
    }
    let mut pre = renorm.clone();
    for i in 0..n {
        // Move some mass from key 0 to the diagonal in head 1.
        let k = (n + i) * n;
        let d = 0.1 * pre[k];
        pre[k] -= d;
        pre[k + i] += d;
    }
    let arr = |shape: &[usize], data: Vec<f32>| Array {
        shape: shape.to_vec(),
        data,
    };
    Capture {
        token_ids: vec![5, 9, 2, 7],
        p,
        layers: vec![LayerCapture {
            layer: 3,
            with_prefix: Some(arr(&[h, n, p + n], with)),
            renormalized: Some(arr(&[h, n, n], renorm)),
            pretrained: arr(&[h, n, n], pre),
            prefix_mass: Some(arr(&[h, n], mass)),
            z_prefixed: None,
            z_pretrained: arr(&[h, n, 1], vec![0.0; h * n]),
            prefix_values: None,
        }],
        logits_last_pretrained: vec![],
        logits_last_prefixed: None,
    }
}

fn labels() -> Vec<String> {
    ["the", " cat", ",\"x\"", " sat"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The expected `(rows, cols)` matrix of a view of head 1, by the paper's formulas, masked cells 0.
fn expected(cap: &Capture, view: ViewKind) -> Vec<f32> {
    let (n, p, h) = (4usize, 2usize, 1usize);
    let lc = &cap.layers[0];
    let w = &lc.with_prefix.as_ref().unwrap().data;
    let pre = &lc.pretrained.data[h * n * n..(h + 1) * n * n];
    let mass = &lc.prefix_mass.as_ref().unwrap().data[h * n..(h + 1) * n];
    let row = |i: usize| &w[(h * n + i) * (p + n)..(h * n + i + 1) * (p + n)];
    match view {
        ViewKind::Raw => (0..n).flat_map(|i| row(i).to_vec()).collect(),
        ViewKind::Renormalized | ViewKind::Difference | ViewKind::Scaled | ViewKind::Pretrained => {
            let mut out = Vec::new();
            for i in 0..n {
                let r = row(i);
                let content: f32 = r[p..].iter().sum();
                for j in 0..n {
                    let ren = r[p + j] / content;
                    out.push(match view {
                        ViewKind::Renormalized => ren,
                        ViewKind::Pretrained => pre[i * n + j],
                        ViewKind::Difference => ren - pre[i * n + j],
                        _ => pre[i * n + j] * (1.0 - mass[i]),
                    });
                }
            }
            out
        }
    }
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "element {k}: {x} vs {y}");
    }
}

const VIEWS: [ViewKind; 5] = [
    ViewKind::Raw,
    ViewKind::Renormalized,
    ViewKind::Pretrained,
    ViewKind::Difference,
    ViewKind::Scaled,
];

#[test]
fn views_match_the_paper_formulas() {
    let cap = capture();
    for v in VIEWS {
        let h = view_heatmap(&cap, &labels(), 3, 1, v).unwrap();
        let got = prefixscope::figure::data::heatmap_array(&h);
        close(&got.data, &expected(&cap, v), 1e-6);
    }
    // The difference view is not trivially zero in this capture.
    let d = expected(&cap, ViewKind::Difference);
    assert!(d.iter().any(|x| x.abs() > 1e-3));
    // Bad indices are clear errors.
    let e = view_heatmap(&cap, &labels(), 0, 0, ViewKind::Raw).unwrap_err();
    assert!(
        e.one_line().contains("captured layer (3)"),
        "{}",
        e.one_line()
    );
    let e = view_heatmap(&cap, &labels(), 3, 2, ViewKind::Raw).unwrap_err();
    assert!(e.one_line().contains("below 2"), "{}", e.one_line());
}

#[test]
fn npz_json_csv_npy_read_back_equal() {
    let cap = capture();
    let dir = common::temp_dir("figure-data");
    let opts = ExportOptions::default();

    // NPZ: one array per view plus the token ids and the prefix length.
    let npz = dir.join("views.npz");
    export_views(&cap, &labels(), 3, 1, &VIEWS, &npz, &opts).unwrap();
    let arrays = read_arrays(&npz).unwrap();
    for v in VIEWS {
        let a = &arrays[&format!("{}_L3_H1", v.name())];
        let cols = if v == ViewKind::Raw { 6 } else { 4 };
        assert_eq!(a.shape, vec![4, cols]);
        close(&a.data, &expected(&cap, v), 1e-6);
    }
    assert_eq!(arrays["token_ids"].data, vec![5.0, 9.0, 2.0, 7.0]);
    assert_eq!(arrays["prefix_len"].data, vec![2.0]);

    // NPY: one view only.
    let npy = dir.join("renorm.npy");
    export_views(
        &cap,
        &labels(),
        3,
        1,
        &[ViewKind::Renormalized],
        &npy,
        &opts,
    )
    .unwrap();
    let a = read_arrays(&npy).unwrap().into_values().next().unwrap();
    close(&a.data, &expected(&cap, ViewKind::Renormalized), 1e-6);
    let e = export_views(&cap, &labels(), 3, 1, &VIEWS, &dir.join("x.npy"), &opts).unwrap_err();
    assert!(
        e.one_line().contains("exactly one panel"),
        "{}",
        e.one_line()
    );

    // JSON: values, token labels (as given, spaces and quotes intact) and metadata.
    let json = dir.join("views.json");
    export_views(&cap, &labels(), 3, 1, &VIEWS, &json, &opts).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["layer"], 3);
    assert_eq!(v["head"], 1);
    assert_eq!(v["prefix_len"], 2);
    assert_eq!(v["tokens"][2], ",\"x\"");
    let raw = &v["panels"][0];
    assert_eq!(raw["name"], "raw_L3_H1");
    assert_eq!(raw["cols"][0], "[P1]");
    assert_eq!(raw["cols"][3], " cat");
    let flat: Vec<f32> = raw["values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    close(&flat, &expected(&cap, ViewKind::Raw), 1e-6);

    // CSV: a tidy table; quoted tokens survive commas and quotes.
    let csv = dir.join("views.csv");
    export_views(&cap, &labels(), 3, 1, &VIEWS, &csv, &opts).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "panel,row,row_token,col,col_token,value"
    );
    let mut diff = vec![f32::NAN; 16];
    for line in lines {
        let f = split_csv(line);
        assert_eq!(f.len(), 6, "{line}");
        if f[0] == "difference_L3_H1" {
            let (r, c): (usize, usize) = (f[1].parse().unwrap(), f[3].parse().unwrap());
            assert_eq!(f[2], labels()[r]);
            assert_eq!(f[4], labels()[c]);
            diff[r * 4 + c] = f[5].parse().unwrap();
        }
    }
    close(&diff, &expected(&cap, ViewKind::Difference), 1e-6);

    // Never silently overwritten.
    let before = std::fs::read(&csv).unwrap();
    let e = export_views(&cap, &labels(), 3, 1, &[ViewKind::Raw], &csv, &opts).unwrap_err();
    assert!(e.one_line().contains("existing file"), "{}", e.one_line());
    assert_eq!(std::fs::read(&csv).unwrap(), before);
    let force = ExportOptions {
        overwrite: true,
        ..ExportOptions::default()
    };
    export_views(&cap, &labels(), 3, 1, &[ViewKind::Raw], &csv, &force).unwrap();
    assert_ne!(std::fs::read(&csv).unwrap(), before);

    // Figures through the same call, and no temporary files left anywhere.
    export_views(&cap, &labels(), 3, 1, &VIEWS, &dir.join("views.svg"), &opts).unwrap();
    export_views(&cap, &labels(), 3, 1, &VIEWS, &dir.join("views.png"), &opts).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn clipboard_pixels_are_the_png_pixels() {
    let cap = capture();
    let opts = ExportOptions {
        scale: 1.0,
        ..ExportOptions::default()
    };
    let (w, h, rgba) = views_rgba(
        &cap,
        &labels(),
        3,
        1,
        &[ViewKind::Raw, ViewKind::Difference],
        &opts,
    )
    .unwrap();
    assert_eq!(rgba.len(), (w * h * 4) as usize);
    let dir = common::temp_dir("figure-clip");
    let png = dir.join("f.png");
    export_views(
        &cap,
        &labels(),
        3,
        1,
        &[ViewKind::Raw, ViewKind::Difference],
        &png,
        &opts,
    )
    .unwrap();
    let img = image::open(&png).unwrap().to_rgba8();
    assert_eq!((img.width(), img.height()), (w, h));
    assert_eq!(img.as_raw(), &rgba);
    assert!(rgba.chunks(4).all(|p| p[3] == 255), "opaque");
}

#[test]
fn views_without_a_prefix_are_refused_clearly() {
    let mut cap = capture();
    let lc = &mut cap.layers[0];
    lc.with_prefix = None;
    lc.renormalized = None;
    lc.prefix_mass = None;
    cap.p = 0;
    assert!(view_heatmap(&cap, &labels(), 3, 0, ViewKind::Pretrained).is_ok());
    let e = view_heatmap(&cap, &labels(), 3, 0, ViewKind::Difference).unwrap_err();
    assert!(
        e.one_line().contains("a prefix for the 'difference' view"),
        "{}",
        e.one_line()
    );
    assert!(ViewKind::parse_list("raw,bogus").is_err());
    assert_eq!(
        ViewKind::parse_list("raw, renormalized").unwrap(),
        vec![ViewKind::Raw, ViewKind::Renormalized]
    );
}

/// Split one CSV line with quoted fields ("" escapes a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}
