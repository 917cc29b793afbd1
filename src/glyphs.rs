//! Glyphs for every script: which characters some font can draw, the system fonts the window adds as
//! fallbacks, and the rule for the rest: a character no font has is written as its code point
//! (`U+1F642`), never as a box or `?`.
//!
//! The fonts are the figure rasterizer's database ([`crate::figure::raster::fonts`]: the system fonts
//! found by fontdb, plus the faces the program ships from `epaint_default_fonts`), so the window, the
//! SVG/PNG/PDF figures and this check agree on what can be drawn. Coverage is read from each face's
//! character map with ttf-parser.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// `U+XXXX` (at least four hex digits), the written form of a character no font can draw.
pub fn code_point(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// Whether some face in the font database has a glyph for `c` (cached per character).
pub fn covered(c: char) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<char, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(&v) = cache.lock().ok().and_then(|m| m.get(&c).copied()).as_ref() {
        return v;
    }
    let db = crate::figure::raster::fonts();
    let v = db.faces().any(|f| face_has(&db, f.id, c));
    if let Ok(mut m) = cache.lock() {
        m.insert(c, v);
    }
    v
}

fn face_has(db: &resvg::usvg::fontdb::Database, id: resvg::usvg::fontdb::ID, c: char) -> bool {
    db.with_face_data(id, |data, index| {
        ttf_parser::Face::parse(data, index)
            .ok()
            .and_then(|f| f.glyph_index(c))
            .is_some()
    })
    .unwrap_or(false)
}

/// `s` with every character that `has` cannot draw written as its code point; whitespace and
/// control characters are left to the caller's own escaping.
pub fn drawable_with(s: &str, mut has: impl FnMut(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() || has(c) {
            out.push(c);
        } else {
            out.push_str(&code_point(c));
        }
    }
    out
}

/// [`drawable_with`] against the font database (figures).
pub fn drawable(s: &str) -> String {
    if s.is_ascii() {
        // Every face we ship covers ASCII; no lookup.
        return s.to_string();
    }
    drawable_with(s, covered)
}

/// Characters of scripts the shipped faces lack, one per script: a system face that has one of
/// them is worth adding to the window's fallbacks.
const PROBES: [char; 14] = [
    '新', // Han
    'し', // Hiragana
    'カ', // Katakana
    '한', // Hangul
    'ก',  // Thai
    'ا',  // Arabic
    'א',  // Hebrew
    'ह',  // Devanagari
    'Ж',  // Cyrillic
    'Ω',  // Greek
    'ა',  // Georgian
    '∑',  // mathematical operators
    '→',  // arrows
    '🙂', // emoji
];

/// System faces that add scripts to the shipped ones: `(name, font file bytes, face index)`, one face
/// per probed script that the faces before it lack, regular faces first. Colour bitmap emoji fonts
/// are skipped (the window draws outlines only).
pub fn fallback_faces() -> Vec<(String, Vec<u8>, u32)> {
    let db = crate::figure::raster::fonts();
    let mut faces: Vec<&resvg::usvg::fontdb::FaceInfo> = db
        .faces()
        .filter(|f| !matches!(f.source, resvg::usvg::fontdb::Source::Binary(_)))
        .filter(|f| {
            !f.families
                .iter()
                .any(|(n, _)| n.to_lowercase().contains("color emoji"))
        })
        .collect();
    // Regular upright faces before bold or italic ones.
    faces.sort_by_key(|f| {
        (
            f.style != resvg::usvg::fontdb::Style::Normal,
            f.weight.0.abs_diff(400),
        )
    });
    let mut chosen: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut chosen_ids = Vec::new();
    for probe in PROBES {
        if chosen_ids.iter().any(|&id| face_has(&db, id, probe)) {
            continue;
        }
        if let Some(f) = faces.iter().find(|f| face_has(&db, f.id, probe)) {
            let name = f
                .families
                .first()
                .map_or_else(|| f.post_script_name.clone(), |(n, _)| n.clone());
            if let Some(data) = db.with_face_data(f.id, |d, _| d.to_vec()) {
                chosen_ids.push(f.id);
                chosen.push((format!("{name} ({})", f.index), data, f.index));
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_points_replace_only_what_cannot_be_drawn() {
        assert_eq!(code_point('🙂'), "U+1F642");
        assert_eq!(code_point('é'), "U+00E9");
        let s = drawable_with("a 新b🙂", |c| c.is_ascii());
        assert_eq!(s, "a U+65B0bU+1F642");
    }

    #[test]
    fn shipped_faces_cover_latin_and_emoji() {
        // Ubuntu and Noto Emoji ship with the program (epaint_default_fonts).
        assert!(covered('é'));
        assert!(covered('😀'));
        assert_eq!(drawable("café 😀"), "café 😀");
        // Whatever the system has, a character is either drawn or written as its code point.
        let s = drawable("🙂");
        assert!(s == "🙂" || s == "U+1F642", "{s}");
    }
}
