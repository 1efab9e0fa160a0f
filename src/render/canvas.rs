//! An RGB picture in memory: pixels, 8×8 bitmap text (the `font8x8` crate) and PNG encoding (the `png` crate).

use std::path::Path;

use crate::error::{Result, VoxelError};

/// The largest picture drawn (pixels); a section and scale beyond it are refused before anything is read.
pub const MAX_PIXELS: usize = 1 << 26;

/// Side of a character cell in pixels.
pub const GLYPH: usize = 8;

pub const BLACK: [u8; 3] = [0, 0, 0];
pub const WHITE: [u8; 3] = [255, 255, 255];

#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<[u8; 3]>,
}

impl Canvas {
    /// A `width` × `height` picture filled with `background`; at most [`MAX_PIXELS`], at least 1×1.
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Result<Canvas> {
        check_size(width, height)?;
        Ok(Canvas {
            width,
            height,
            pixels: vec![background; width * height],
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixel at (x, y), or `None` outside the picture.
    pub fn get(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        (x < self.width && y < self.height).then(|| self.pixels[y * self.width + x])
    }

    /// Set the pixel at (x, y); outside the picture nothing happens.
    pub fn set(&mut self, x: usize, y: usize, colour: [u8; 3]) {
        if x < self.width && y < self.height {
            self.pixels[y * self.width + x] = colour;
        }
    }

    /// `text` in 8×8 cells from (x, y) (top-left), clipped at the picture's edges; characters outside ASCII are
    /// drawn as `?`.
    pub fn text(&mut self, x: usize, y: usize, text: &str, colour: [u8; 3]) {
        for (n, ch) in text.chars().enumerate() {
            let code = if ch.is_ascii() {
                ch as usize
            } else {
                '?' as usize
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            let left = x + n * GLYPH;
            if left >= self.width {
                break;
            }
            for (dy, bits) in glyph.iter().enumerate() {
                for dx in 0..GLYPH {
                    // Bit 0 is the leftmost pixel of the row.
                    if (bits >> dx) & 1 == 1 {
                        self.set(left + dx, y + dy, colour);
                    }
                }
            }
        }
    }

    /// The picture as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let png_err = |e: png::EncodingError| VoxelError::Invalid(format!("PNG encoding: {e}"));
        let (w, h) = (to_u32(self.width)?, to_u32(self.height)?);
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer
            .write_image_data(self.pixels.as_flattened())
            .map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        Ok(out)
    }

    /// Write the PNG to `path`.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png()?;
        std::fs::write(path, bytes).map_err(|e| VoxelError::io(path, e))
    }
}

/// Refuse pictures that are empty or larger than [`MAX_PIXELS`].
pub fn check_size(width: usize, height: usize) -> Result<()> {
    match width.checked_mul(height) {
        Some(n) if n > 0 && n <= MAX_PIXELS => Ok(()),
        _ => Err(VoxelError::Invalid(format!(
            "a picture of {width}x{height} pixels is {}; choose a smaller section or --scale",
            if width == 0 || height == 0 {
                "empty".to_string()
            } else {
                format!("larger than the limit of {MAX_PIXELS} pixels")
            }
        ))),
    }
}

fn to_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| VoxelError::Invalid(format!("picture side {n} too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_glyphs_and_clips() {
        let mut c = Canvas::new(12, 10, BLACK).unwrap();
        c.text(0, 0, "L", WHITE);
        let lit: usize = (0..10)
            .flat_map(|y| (0..12).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y) == Some(WHITE))
            .count();
        // font8x8's L: a vertical bar and a foot, within the first 8×8 cell.
        assert!(lit > 8, "{lit}");
        assert!((0..10).all(|y| (8..12).all(|x| c.get(x, y) == Some(BLACK))));
        // Clipped at the edge, no panic.
        c.text(10, 8, "Ré", WHITE);
    }

    #[test]
    fn png_round_trip() {
        let mut c = Canvas::new(3, 2, BLACK).unwrap();
        c.set(2, 1, [10, 20, 30]);
        let bytes = c.to_png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[15..18], &[10, 20, 30]);
        assert_eq!(&buf[..3], &[0, 0, 0]);
    }

    #[test]
    fn sizes_are_capped() {
        assert!(Canvas::new(0, 5, BLACK).is_err());
        assert!(Canvas::new(1 << 14, 1 << 13, BLACK).is_err());
        assert!(check_size(usize::MAX, 2).is_err());
    }
}
