//! PDF output: the same SVG converted by svg2pdf (vector shapes, text kept as text with the fonts
//! subset and embedded), at 96 dpi so one SVG pixel is one CSS pixel on the page.

use crate::error::{Error, Result};

pub fn pdf_bytes(svg: &str) -> Result<Vec<u8>> {
    let tree = super::raster::parse(svg)?;
    svg2pdf::to_pdf(
        &tree,
        svg2pdf::ConversionOptions::default(),
        svg2pdf::PageOptions { dpi: 96.0 },
    )
    .map_err(|e| {
        Error::format(
            "<figure pdf>",
            "PDF conversion",
            "a convertible SVG",
            e.to_string(),
        )
    })
}
