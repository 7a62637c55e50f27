//! Frame decoding with the size checked before anything is allocated for the pixels.
//!
//! Raw `gray8`/`rgb8` frames are used in place (their length was checked against width × height ×
//! channels). PNG and JPEG: the decoder reads the header only, its dimensions are checked against the
//! configured maximum, and only then are the pixels decoded, into a buffer from the pool; `image`'s
//! own allocations are capped by `Limits::max_alloc` as well. So a small PNG that claims 60000 × 60000
//! is refused without a large allocation.

use std::io::Cursor;

use image::{ImageDecoder, Limits};

use super::frame::Layout;
use super::{Format, Settings};

/// Buffers for decoded pixels, reused from frame to frame: in steady state (frames of one size) taking
/// and giving back allocates nothing.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    /// Buffers kept at most (the rest are dropped when given back).
    keep: usize,
}

impl BufferPool {
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            free: Vec::with_capacity(keep),
            keep,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified): a pooled one when one is large enough.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut buf = match self.free.iter().position(|b| b.capacity() >= len) {
            Some(i) => self.free.swap_remove(i),
            None => self.free.pop().unwrap_or_default(),
        };
        buf.resize(len, 0);
        buf
    }

    pub fn give(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.keep {
            self.free.push(buf);
        }
    }
}

/// Why a frame could not be decoded; each names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> DecodeError {
    DecodeError {
        field,
        message: message.into(),
    }
}

/// Decoded pixels in a pooled buffer.
pub struct Decoded {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
}

/// Decodes an encoded frame (`png`, `jpeg`) into a pooled buffer, checking its size first.
pub fn decode(
    format: Format,
    data: &[u8],
    claimed: (u32, u32),
    settings: &Settings,
    pool: &mut BufferPool,
) -> Result<Decoded, DecodeError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(settings.max_width);
    limits.max_image_height = Some(settings.max_height);
    limits.max_alloc = Some(settings.max_decoded_bytes());
    match format {
        Format::Png => {
            let decoder = image::codecs::png::PngDecoder::with_limits(Cursor::new(data), limits)
                .map_err(|err| match err {
                    image::ImageError::Limits(err) => {
                        bad("data", too_large(settings, &err.to_string()))
                    }
                    err => bad("data", format!("not a PNG this daemon can read: {err}")),
                })?;
            finish(decoder, claimed, settings, pool)
        }
        Format::Jpeg => {
            let mut decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(data))
                .map_err(|err| bad("data", format!("not a JPEG this daemon can read: {err}")))?;
            decoder
                .set_limits(limits)
                .map_err(|err| bad("data", too_large(settings, &err.to_string())))?;
            finish(decoder, claimed, settings, pool)
        }
        Format::Gray8 | Format::Rgb8 => Err(bad("format", "raw formats are not decoded")),
    }
}

fn too_large(settings: &Settings, detail: &str) -> String {
    format!(
        "the image is larger than the maximum of {} × {} ({detail})",
        settings.max_width, settings.max_height
    )
}

fn finish(
    decoder: impl ImageDecoder,
    claimed: (u32, u32),
    settings: &Settings,
    pool: &mut BufferPool,
) -> Result<Decoded, DecodeError> {
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(bad("data", "the image has no pixels"));
    }
    if width > settings.max_width || height > settings.max_height {
        return Err(bad(
            "data",
            too_large(settings, &format!("its header says {width} × {height}")),
        ));
    }
    if claimed.0 != 0 && claimed.0 != width {
        return Err(bad(
            "width",
            format!("{} does not match the image's width {width}", claimed.0),
        ));
    }
    if claimed.1 != 0 && claimed.1 != height {
        return Err(bad(
            "height",
            format!("{} does not match the image's height {height}", claimed.1),
        ));
    }
    let color = decoder.color_type();
    let channels = color.channel_count();
    let bytes_per_channel = color.bytes_per_pixel() / channels;
    if !(1..=4).contains(&channels) || !(1..=2).contains(&bytes_per_channel) {
        return Err(bad("data", format!("unsupported pixel type {color:?}")));
    }
    let total = decoder.total_bytes();
    if total > settings.max_decoded_bytes() {
        return Err(bad("data", too_large(settings, "decoded size")));
    }
    let mut pixels = pool.take(total as usize);
    if let Err(err) = decoder.read_image(&mut pixels) {
        pool.give(pixels);
        return Err(bad(
            "data",
            format!("the image could not be decoded: {err}"),
        ));
    }
    Ok(Decoded {
        pixels,
        width,
        height,
        layout: Layout {
            channels,
            bytes_per_channel,
        },
    })
}
