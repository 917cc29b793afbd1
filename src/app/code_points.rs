//! The window's last-resort glyphs: a character that no installed font has (after the system
//! fallbacks `crate::glyphs::fallback_faces` added) is drawn as its code point, `U+1F642`, in small
//! text standing on the baseline, in every text egui draws (the prompt box included), never as a box.
//! The text is rasterized with the figures' renderer (resvg and the same fonts).

use egui::epaint::text::{GlyphBitmap, GlyphRasterizer, GlyphRasterizerRequest, RasterizedGlyph};
use egui::{Color32, ColorImage};

/// The rasterizer to install with `Context::add_glyph_rasterizer` (a fallback: asked only about
/// clusters no font has).
pub fn rasterizer() -> GlyphRasterizer {
    GlyphRasterizer::new("prefixscope::code_points", rasterize)
}

fn rasterize(req: &GlyphRasterizerRequest<'_>) -> Option<RasterizedGlyph> {
    let text: String = req
        .cluster
        .chars()
        .filter(|c| !c.is_control())
        .map(crate::glyphs::code_point)
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        return None;
    }
    // Smaller than the text around it, so a code point reads as a stand-in, not as words.
    let size = (req.font_size_px * 0.62).max(6.0);
    let width = (text.chars().count() as f32 * size * 0.72).ceil() + 2.0;
    let height = (size * 1.25).ceil();
    let svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"><text x="1" y="{}" font-family="{}" font-size="{size}" fill="white">{}</text></svg>"#,
        size,
        crate::figure::svg::FONT_FAMILY,
        crate::figure::svg::esc(&text)
    );
    // Rendered on a transparent pixmap: the alpha is the coverage egui wants.
    let (w, h) = (width as u32, height as u32);
    let tree = crate::figure::raster::parse(&svg).ok()?;
    let mut clear = resvg::tiny_skia::Pixmap::new(w, h)?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::identity(),
        &mut clear.as_mut(),
    );
    let pixels = clear
        .pixels()
        .iter()
        .map(|p| Color32::from_white_alpha(p.alpha()))
        .collect();
    Some(RasterizedGlyph {
        bitmap: GlyphBitmap {
            image: ColorImage::new([w as usize, h as usize], pixels),
            // The pen is at the baseline: the text's baseline is `size` below the image top.
            offset_px: egui::vec2(1.0, -size),
            is_color: false,
        },
        advance_px: width + 3.0,
    })
}
