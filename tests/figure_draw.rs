//! The drawing path: SVG parsed by a real parser (usvg) with its titles and token labels, PNG decoded
//! at the expected size and not blank, cells painted in the colour of their value, and the SVG file
//! rendering to exactly the PNG file.

mod common;

use common::svg_texts;
use prefixscope::figure::raster;
use prefixscope::figure::svg::{Annotate, Figure, Panel, Scale, Scatter, Series};
use prefixscope::figure::{attention_heatmap, save_figure};

fn labels(s: &str) -> Vec<String> {
    s.split(' ').map(|x| x.to_string()).collect()
}

/// A causal attention matrix with a prefix column: row i puts `mass` on the prefix, the rest
/// uniformly on keys 0..=i.
fn toy_attention(n: usize, p: usize, mass: f32) -> Vec<f32> {
    let mut v = vec![0.0; n * (p + n)];
    for i in 0..n {
        for k in 0..p {
            v[i * (p + n) + k] = mass / p as f32;
        }
        for j in 0..=i {
            v[i * (p + n) + p + j] = (1.0 - mass) / (i + 1) as f32;
        }
    }
    v
}

fn sample_figure() -> Figure {
    let rows = labels("2 6 0 1 4 6 3 0 1 2");
    let mut cols = vec!["[prefix]".to_string()];
    cols.extend(rows.iter().cloned());
    let raw = attention_heatmap(
        "raw_L0_H0",
        "With prefix (raw)",
        &rows,
        &cols,
        &toy_attention(10, 1, 0.5),
        1,
        Scale::probability(),
    )
    .unwrap();
    let mut pre_vals = vec![0.0; 100];
    for i in 0..10 {
        pre_vals[i * 10 + i] = 1.0; // the diagonal: value 1 paints the dark end of the map
    }
    let pre = attention_heatmap(
        "pretrained_L0_H0",
        "Pretrained (no prefix)",
        &rows,
        &rows,
        &pre_vals,
        0,
        Scale::probability(),
    )
    .unwrap();
    let mut f = Figure::new(vec![Panel::Heatmap(raw), Panel::Heatmap(pre)], 2);
    f.title = Some("Layer 0, head 0".into());
    f
}

#[test]
fn svg_parses_and_holds_titles_and_token_labels() {
    let fig = sample_figure();
    let svg = fig.to_svg();
    let tree = raster::parse(&svg).expect("usvg parses our SVG");
    let t = svg_texts(&tree);
    for want in [
        "Layer 0, head 0",
        "With prefix (raw)",
        "Pretrained (no prefix)",
        "[prefix]",
        "query",
        "key",
        "attention",
    ] {
        assert!(t.iter().any(|x| x == want), "'{want}' not among {t:?}");
    }
    // Every token label appears on both axes of both panels: 10 rows x 2 + 11 + 10 columns.
    let sixes = t.iter().filter(|x| *x == "6").count();
    assert_eq!(
        sixes,
        2 * 2 + 2 * 2,
        "two '6' tokens on each axis of each panel"
    );
    // Small matrices carry their values: the raw panel's row 0 is .50 / .50.
    assert!(t.iter().any(|x| x == ".50"), "cell values printed");
    let (w, h) = fig.size();
    assert_eq!(tree.size().width() as u32, w);
    assert_eq!(tree.size().height() as u32, h);
}

#[test]
fn png_has_the_expected_size_at_each_scale_and_is_not_blank() {
    let fig = sample_figure();
    let svg = fig.to_svg();
    let (w, h) = fig.size();
    for scale in [1.0f32, 2.0, 4.0] {
        let bytes = raster::png_bytes(&svg, scale).unwrap();
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .expect("a decodable PNG")
            .to_rgba8();
        assert_eq!(img.width(), (w as f32 * scale).ceil() as u32);
        assert_eq!(img.height(), (h as f32 * scale).ceil() as u32);
        let non_white = img.pixels().filter(|p| p.0[..3] != [255, 255, 255]).count();
        let frac = non_white as f32 / (img.width() * img.height()) as f32;
        assert!(frac > 0.05 && frac < 0.9, "ink fraction {frac} at {scale}x");
        // Crisp cells: the exact colour of value 1 (the pretrained diagonal) is painted, unblended,
        // over at least 10 cells' interiors. The scale is magma reversed (1 is dark), so value 1 is
        // magma's first entry and value 0 its last: matplotlib's `_magma_data[0]` =
        // (0.001462, 0.000466, 0.013866) -> #000004 and `_magma_data[255]` =
        // (0.987053, 0.991438, 0.749504) -> #fcfdbf, written out here, not asked of the painter.
        let cell_px = 30.0 * scale * 30.0 * scale; // cell size for an 11-column matrix: 340 / 11 = 30
        for (value, rgb, cells) in [(1.0, [0u8, 0, 4], 10.0), (0.0, [252, 253, 191], 40.0)] {
            let exact = img.pixels().filter(|p| p.0[..3] == rgb).count();
            assert!(
                exact as f32 > cells * cell_px * 0.5,
                "{exact} pixels of the value-{value} colour {rgb:?} at {scale}x"
            );
        }
    }
}

#[test]
fn text_is_rendered_with_a_real_font() {
    // A figure of only a title: if no font were found, the PNG would be blank.
    let mut f = Figure::new(vec![], 1);
    f.title = Some("Renormalized attention".into());
    let png = raster::png_bytes(&f.to_svg(), 2.0).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgba8();
    let dark = img.pixels().filter(|p| p.0[0] < 100).count();
    assert!(dark > 200, "title glyphs rendered ({dark} dark pixels)");
    if !raster::has_dejavu() {
        eprintln!("note: DejaVu Sans not installed; text used the embedded Ubuntu face");
    }
}

#[test]
fn svg_file_renders_exactly_like_the_png_file() {
    let dir = tempdir();
    let fig = sample_figure();
    let svg_path = dir.join("fig.svg");
    let png_path = dir.join("fig.png");
    save_figure(&fig, &svg_path, 2.0, false).unwrap();
    save_figure(&fig, &png_path, 2.0, false).unwrap();
    let svg_text = std::fs::read_to_string(&svg_path).unwrap();
    let fresh = raster::rasterize(&svg_text, 2.0).unwrap();
    let written = raster::load_png(&png_path).unwrap();
    assert_eq!(
        (fresh.width(), fresh.height()),
        (written.width(), written.height())
    );
    let differing = fresh
        .data()
        .iter()
        .zip(written.data())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "SVG and PNG disagree in {differing} bytes");
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn existing_files_are_not_replaced_without_overwrite() {
    let dir = tempdir();
    let p = dir.join("fig.svg");
    std::fs::write(&p, "keep me").unwrap();
    let err = save_figure(&sample_figure(), &p, 1.0, false).unwrap_err();
    assert!(
        err.one_line().contains("existing file"),
        "{}",
        err.one_line()
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep me");
    save_figure(&sample_figure(), &p, 1.0, true).unwrap();
    assert!(std::fs::read_to_string(&p).unwrap().starts_with("<svg"));
    let bad = save_figure(&sample_figure(), &dir.join("fig.gif"), 1.0, false).unwrap_err();
    assert!(bad.one_line().contains("'.gif'"), "{}", bad.one_line());
}

#[test]
fn pdf_is_one_page_of_the_figure_size_with_embedded_fonts() {
    let dir = tempdir();
    let fig = sample_figure();
    let p = dir.join("fig.pdf");
    save_figure(&fig, &p, 1.0, false).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("/Type /Pages") && text.contains("/Count 1"),
        "one page"
    );
    // 96 dpi: the page is the SVG size in px times 72/96, in points.
    let (w, h) = fig.size();
    let mb = format!("/MediaBox [0 0 {} {}]", w as f32 * 0.75, h as f32 * 0.75);
    assert!(text.contains(&mb), "{mb} not in the PDF");
    assert!(text.contains("/FontFile2"), "a TrueType font is embedded");
}

#[test]
fn masked_cells_are_not_drawn_and_dividers_mark_the_prefix() {
    let fig = sample_figure();
    let svg = fig.to_svg();
    // 10x11 raw (55 + 10 drawn) + 10x10 pretrained (55 drawn) cells carry a hover title each.
    let cells = svg.matches("<rect x=").count() - 1 /* background */ - 2 /* frames */;
    assert_eq!(cells, (55 + 10) + 55);
    assert_eq!(svg.matches(r#"class="divider""#).count(), 1);
}

#[test]
fn difference_panels_use_a_diverging_scale_and_tiny_ticks() {
    let rows = labels("a b c");
    let d = vec![
        0.0,
        f32::NAN,
        f32::NAN,
        2e-7,
        -1e-7,
        f32::NAN,
        0.0,
        1e-7,
        -2e-7,
    ];
    let mut h = attention_heatmap(
        "d",
        "Difference",
        &rows,
        &rows,
        &d,
        0,
        Scale::diverging_for(&d),
    )
    .unwrap();
    h.value_label = "difference".into();
    let mut fig = Figure::new(vec![Panel::Heatmap(h)], 1);
    fig.annotate = Annotate::Auto;
    let svg = fig.to_svg();
    // The cells' colours, by hand from ColorBrewer's published 11-class RdBu (#67001f #b2182b
    // #d6604d #f4a582 #fddbc7 #f7f7f7 #d1e5f0 #92c5de #4393c3 #2166ac #053061), reversed so that
    // positive is red, interpolated linearly between neighbouring control points as matplotlib's
    // `RdBu` (a LinearSegmentedColormap over these 11 points) does:
    // - +limit: #67001f; -limit: #053061;
    // - 0: the middle control point itself, #f7f7f7 = (247, 247, 247) (zero is white);
    // - -limit/2: halfway between control points 7 and 8 (#92c5de, #4393c3):
    //   (106.5, 172, 208.5);
    // - +limit/2: halfway between control points 2 and 3 (#d6604d, #f4a582): (229, 130.5, 103.5).
    let cell = |row: &str, col: &str| -> [u8; 3] {
        let key = format!("<title>{row} \u{2192} {col}: ");
        let at = svg
            .find(&key)
            .unwrap_or_else(|| panic!("no cell {row} -> {col}"));
        let fill = svg[..at].rfind("fill=\"#").expect("the cell's fill") + 7;
        let hex = &svg[fill..fill + 6];
        let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
        [c(0), c(2), c(4)]
    };
    let near = |got: [u8; 3], want: [u8; 3]| got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 1);
    // Halves round either way: one unit of slack everywhere.
    assert!(
        near(cell("b", "a"), [103, 0, 31]),
        "+2e-7 is the red end: {:?}",
        cell("b", "a")
    );
    assert!(
        near(cell("c", "c"), [5, 48, 97]),
        "-2e-7 is the blue end: {:?}",
        cell("c", "c")
    );
    for (r, c) in [("a", "a"), ("c", "a")] {
        assert!(
            near(cell(r, c), [247, 247, 247]),
            "0 is near-white: {:?}",
            cell(r, c)
        );
    }
    assert!(
        near(cell("b", "b"), [107, 172, 208]) || near(cell("b", "b"), [106, 172, 209]),
        "-1e-7: {:?}",
        cell("b", "b")
    );
    assert!(
        near(cell("c", "b"), [229, 130, 104]) || near(cell("c", "b"), [229, 131, 103]),
        "+1e-7: {:?}",
        cell("c", "b")
    );
    let tree = raster::parse(&svg).unwrap();
    let t = svg_texts(&tree);
    assert!(t.iter().any(|x| x == "2.0e-7"), "{t:?}");
    assert!(t.iter().any(|x| x == "-2.0e-7"), "{t:?}");
    assert!(
        !t.iter().any(|x| x == ".00"),
        "no meaningless 2-decimal values: {t:?}"
    );
}

#[test]
fn scatter_panels_draw_points_segments_and_legend() {
    let base = Series {
        name: "no prefix".into(),
        color: (90, 90, 90),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        hollow: true,
    };
    let moved = Series {
        name: "ascending prefix".into(),
        color: (0, 114, 178),
        points: vec![(2.0, 0.5), (3.0, 1.5)],
        hollow: false,
    };
    let sc = Scatter {
        name: "c".into(),
        title: "With each task prefix".into(),
        x_label: "dimension 143".into(),
        y_label: "dimension 212".into(),
        segments: vec![
            ((0.0, 0.0), (2.0, 0.5), moved.color),
            ((1.0, 1.0), (3.0, 1.5), moved.color),
        ],
        series: vec![base, moved],
        x_range: None,
        y_range: None,
    };
    let fig = Figure::new(vec![Panel::Scatter(sc)], 1);
    let svg = fig.to_svg();
    assert_eq!(
        svg.matches("<circle").count(),
        4 + 2,
        "4 points + 2 legend marks"
    );
    let tree = raster::parse(&svg).unwrap();
    let t = svg_texts(&tree);
    for want in [
        "With each task prefix",
        "dimension 143",
        "ascending prefix",
        "no prefix",
    ] {
        assert!(t.iter().any(|x| x == want), "'{want}' missing: {t:?}");
    }
    let png = raster::png_bytes(&svg, 1.0).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgba8();
    assert!(
        img.pixels().any(|p| p.0[..3] == [0, 114, 178]),
        "blue points painted"
    );
}

fn tempdir() -> common::Scratch {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    common::temp_dir(&format!(
        "figure-draw-{}",
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
