//! PNG output: the SVG of `svg.rs` rasterized with resvg (usvg parses, tiny-skia paints), so the
//! raster and the vector figure are the same drawing.
//!
//! Text needs fonts. We load the system fonts (DejaVu Sans on Debian with `fonts-dejavu-core`) and
//! always add the Ubuntu face that egui already ships, so labels render even on a machine with no
//! fonts installed at all.

use crate::error::{Error, Result};
use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, fontdb};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The font database, built once per process (scanning the system fonts takes a few ms).
pub fn fonts() -> Arc<fontdb::Database> {
    static DB: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = fontdb::Database::new();
        db.load_system_fonts();
        db.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
        // The window's other shipped faces: symbols and arrows (Hack), emoji outlines (Noto Emoji).
        db.load_font_data(epaint_default_fonts::HACK_REGULAR.to_vec());
        db.load_font_data(epaint_default_fonts::NOTO_EMOJI_REGULAR.to_vec());
        let has_dejavu = db
            .faces()
            .any(|f| f.families.iter().any(|(n, _)| n == "DejaVu Sans"));
        db.set_sans_serif_family(if has_dejavu { "DejaVu Sans" } else { "Ubuntu" });
        Arc::new(db)
    })
    .clone()
}

/// Whether the preferred face (DejaVu Sans) is installed; otherwise text uses the embedded fallback.
pub fn has_dejavu() -> bool {
    fonts()
        .faces()
        .any(|f| f.families.iter().any(|(n, _)| n == "DejaVu Sans"))
}

/// Parse an SVG document with our fonts (text becomes outlines here).
pub fn parse(svg: &str) -> Result<usvg::Tree> {
    let opt = usvg::Options {
        fontdb: fonts(),
        ..Default::default()
    };
    usvg::Tree::from_str(svg, &opt)
        .map_err(|e| Error::format("<figure svg>", "SVG", "a valid SVG document", e.to_string()))
}

/// Rasterize at `scale` (1 = one pixel per SVG px; 2 and 4 for print and slides).
pub fn rasterize(svg: &str, scale: f32) -> Result<Pixmap> {
    if !(scale.is_finite() && scale > 0.0 && scale <= 16.0) {
        return Err(Error::input(
            "scale",
            "a number in (0, 16]",
            scale.to_string(),
        ));
    }
    let tree = parse(svg)?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    let mut pix = Pixmap::new(w, h).ok_or_else(|| {
        Error::input(
            "figure size",
            "a drawable size below the memory limit",
            format!("{w}x{h} px"),
        )
    })?;
    pix.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        Transform::from_scale(scale, scale),
        &mut pix.as_mut(),
    );
    Ok(pix)
}

/// PNG bytes of the SVG at `scale`.
pub fn png_bytes(svg: &str, scale: f32) -> Result<Vec<u8>> {
    let pix = rasterize(svg, scale)?;
    pix.encode_png().map_err(|e| {
        Error::format(
            "<figure png>",
            "PNG encoding",
            "an encodable image",
            e.to_string(),
        )
    })
}

/// Decode a PNG file into a pixmap (for comparing a written PNG with a fresh rendering).
pub fn load_png(path: &Path) -> Result<Pixmap> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Pixmap::decode_png(&bytes)
        .map_err(|e| Error::format(path, "PNG", "a decodable PNG", e.to_string()))
}
