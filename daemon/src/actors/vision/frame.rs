//! Per-frame processing, pure and allocation-free in steady state: area-average downscale to a
//! `grid × grid` gray grid, a 64-bit dHash, and a motion score against the previous kept frame of the
//! same source. Every buffer it writes is owned by the caller ([`SourceState`], [`Scratch`]) and
//! reused from frame to frame; `daemon/tests/vision_alloc.rs` counts allocations to prove it.

/// How the pixels of a frame are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Channels per pixel, 1 to 4 (gray, gray+alpha, RGB, RGBA).
    pub channels: u8,
    /// Bytes per channel: 1, or 2 (native-endian u16, as decoders produce).
    pub bytes_per_channel: u8,
}

impl Layout {
    pub const GRAY8: Layout = Layout {
        channels: 1,
        bytes_per_channel: 1,
    };
    pub const RGB8: Layout = Layout {
        channels: 3,
        bytes_per_channel: 1,
    };

    pub fn bytes_per_pixel(self) -> usize {
        usize::from(self.channels) * usize::from(self.bytes_per_channel)
    }
}

/// A borrowed frame: `data` holds exactly `width × height × bytes_per_pixel` bytes.
#[derive(Debug, Clone, Copy)]
pub struct PixelView<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
}

/// Processing parameters (from `[vision]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Side of the downscaled grid (9 to 64).
    pub grid: usize,
    /// Hashes within this Hamming distance are near-duplicates (with no motion, see [`process`]).
    pub dedup_distance: u32,
    /// A grid cell changed when its gray level moved by more than this (0–255).
    pub cell_threshold: u8,
    /// Motion score (fraction of changed cells) at or above which a frame is a motion event.
    pub motion_threshold: f32,
}

/// What the processor remembers about one source: its previous kept frame.
#[derive(Debug, Clone)]
pub struct SourceState {
    prev: Vec<u8>,
    prev_hash: u64,
    has_prev: bool,
    /// When the source last sent a frame (a counter), so the least recently used can be evicted.
    pub last_used: u64,
}

impl SourceState {
    pub fn new(params: &Params) -> SourceState {
        SourceState {
            prev: vec![0; params.grid * params.grid],
            prev_hash: 0,
            has_prev: false,
            last_used: 0,
        }
    }

    /// The last kept frame's grid (row-major, `grid × grid`).
    pub fn grid(&self) -> &[u8] {
        &self.prev
    }
}

/// Working buffers, reused for every frame.
#[derive(Debug, Clone)]
pub struct Scratch {
    grid: Vec<u8>,
}

impl Scratch {
    pub fn new(params: &Params) -> Scratch {
        Scratch {
            grid: vec![0; params.grid * params.grid],
        }
    }
}

/// A rectangle in the frame's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoundingBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// What one frame was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameResult {
    /// The first frame of its source (nothing to compare with).
    pub first: bool,
    /// Dropped as a near-duplicate of the previous kept frame (which stays the reference).
    pub duplicate: bool,
    /// Hamming distance between this frame's dHash and the previous kept frame's.
    pub hash_distance: u32,
    /// Fraction of grid cells that changed by more than the cell threshold, 0 to 1.
    pub score: f32,
    /// Set when `score ≥ motion_threshold`: the changed region.
    pub motion: Option<BoundingBox>,
}

/// Start and end (exclusive) of cell `i` of `cells` over `len` pixels; never empty.
fn span(i: usize, cells: usize, len: usize) -> (usize, usize) {
    let start = (i * len / cells).min(len.saturating_sub(1));
    let end = ((i + 1) * len / cells).max(start + 1).min(len);
    (start, end)
}

/// Area-average of `view` into `out` (`gw × gh`, row-major), as gray levels 0–255.
fn downscale_into(view: &PixelView<'_>, gw: usize, gh: usize, out: &mut [u8]) {
    let Layout {
        channels,
        bytes_per_channel,
    } = view.layout;
    match (channels, bytes_per_channel) {
        (1, 1) | (2, 1) => downscale_with(view, gw, gh, out, |p| u32::from(p[0])),
        (3, 1) | (4, 1) => downscale_with(view, gw, gh, out, |p| {
            luma(u32::from(p[0]), u32::from(p[1]), u32::from(p[2]))
        }),
        (1, 2) | (2, 2) => downscale_with(view, gw, gh, out, |p| high_byte(p, 0)),
        _ => downscale_with(view, gw, gh, out, |p| {
            luma(high_byte(p, 0), high_byte(p, 2), high_byte(p, 4))
        }),
    }
}

/// BT.601 luma in fixed point (weights 77/150/29 of 256).
#[inline]
fn luma(r: u32, g: u32, b: u32) -> u32 {
    (77 * r + 150 * g + 29 * b) >> 8
}

#[inline]
fn high_byte(p: &[u8], at: usize) -> u32 {
    u32::from(u16::from_ne_bytes([p[at], p[at + 1]]) >> 8)
}

#[inline]
fn downscale_with(
    view: &PixelView<'_>,
    gw: usize,
    gh: usize,
    out: &mut [u8],
    gray: impl Fn(&[u8]) -> u32,
) {
    let (w, h) = (view.width as usize, view.height as usize);
    let bpp = view.layout.bytes_per_pixel();
    let stride = w * bpp;
    for gy in 0..gh {
        let (y0, y1) = span(gy, gh, h);
        for gx in 0..gw {
            let (x0, x1) = span(gx, gw, w);
            let mut sum: u64 = 0;
            for y in y0..y1 {
                let row = &view.data[y * stride + x0 * bpp..y * stride + x1 * bpp];
                for pixel in row.chunks_exact(bpp) {
                    sum += u64::from(gray(pixel));
                }
            }
            let count = ((y1 - y0) * (x1 - x0)) as u64;
            out[gy * gw + gx] = (sum / count) as u8;
        }
    }
}

/// dHash of a `grid × grid` gray grid: area-averaged to 9 × 8, one bit per horizontal neighbour pair
/// (set when the left cell is darker).
pub fn dhash(grid: &[u8], side: usize) -> u64 {
    let mut small = [0u8; 72];
    let view = PixelView {
        data: grid,
        width: side as u32,
        height: side as u32,
        layout: Layout::GRAY8,
    };
    downscale_into(&view, 9, 8, &mut small);
    let mut hash = 0u64;
    for row in 0..8 {
        for col in 0..8 {
            hash <<= 1;
            if small[row * 9 + col] < small[row * 9 + col + 1] {
                hash |= 1;
            }
        }
    }
    hash
}

/// Processes one frame of a source: allocation-free (it writes only `state` and `scratch`).
///
/// A frame is a near-duplicate when its dHash is within `dedup_distance` of the previous kept frame's
/// **and** its motion score is below the threshold: the hash catches global near-identity (sensor
/// noise, recompression), the cell comparison a small object moving that a 64-bit hash may not see.
/// A duplicate does not replace the reference, so slow drift accumulates until it counts.
pub fn process(
    view: &PixelView<'_>,
    state: &mut SourceState,
    scratch: &mut Scratch,
    params: &Params,
) -> FrameResult {
    let g = params.grid;
    downscale_into(view, g, g, &mut scratch.grid);
    let hash = dhash(&scratch.grid, g);
    if !state.has_prev {
        std::mem::swap(&mut state.prev, &mut scratch.grid);
        state.prev_hash = hash;
        state.has_prev = true;
        return FrameResult {
            first: true,
            duplicate: false,
            hash_distance: 0,
            score: 0.0,
            motion: None,
        };
    }
    let hash_distance = (hash ^ state.prev_hash).count_ones();
    let (mut changed, mut min_x, mut min_y, mut max_x, mut max_y) = (0usize, g, g, 0, 0);
    for (i, (new, old)) in scratch.grid.iter().zip(state.prev.iter()).enumerate() {
        if new.abs_diff(*old) > params.cell_threshold {
            changed += 1;
            let (x, y) = (i % g, i / g);
            min_x = min_x.min(x);
            max_x = max_x.max(x);
            min_y = min_y.min(y);
            max_y = max_y.max(y);
        }
    }
    let score = changed as f32 / (g * g) as f32;
    let moving = changed > 0 && score >= params.motion_threshold;
    let duplicate = hash_distance <= params.dedup_distance && !moving;
    if duplicate {
        return FrameResult {
            first: false,
            duplicate: true,
            hash_distance,
            score,
            motion: None,
        };
    }
    std::mem::swap(&mut state.prev, &mut scratch.grid);
    state.prev_hash = hash;
    let motion = moving.then(|| {
        let (w, h) = (view.width as usize, view.height as usize);
        let (x0, _) = span(min_x, g, w);
        let (_, x1) = span(max_x, g, w);
        let (y0, _) = span(min_y, g, h);
        let (_, y1) = span(max_y, g, h);
        BoundingBox {
            x: x0 as u32,
            y: y0 as u32,
            width: (x1 - x0) as u32,
            height: (y1 - y0) as u32,
        }
    });
    FrameResult {
        first: false,
        duplicate: false,
        hash_distance,
        score,
        motion,
    }
}

/// The embedding of a kept frame for the episodic buffer: its grid area-averaged to an `s × s`
/// thumbnail with `s = ⌊√dim⌋` (at most the grid), mean-centred (so cosine compares the pattern, not
/// the brightness), zero-padded to `dim` and L2-normalised. A uniform frame (all zero after centring)
/// gets the first unit vector, since the buffer refuses an all-zero embedding.
pub fn embedding(grid: &[u8], side: usize, dim: usize) -> Vec<f32> {
    let s = ((dim as f64).sqrt() as usize).clamp(1, side);
    let mut thumb = vec![0u8; s * s];
    let view = PixelView {
        data: grid,
        width: side as u32,
        height: side as u32,
        layout: Layout::GRAY8,
    };
    downscale_into(&view, s, s, &mut thumb);
    let mut out = vec![0f32; dim];
    let mean = thumb.iter().map(|v| f32::from(*v)).sum::<f32>() / thumb.len() as f32;
    for (o, v) in out.iter_mut().zip(thumb.iter()) {
        *o = f32::from(*v) - mean;
    }
    normalise(&mut out);
    out
}

/// L2-normalises `v` in place; an all-zero vector becomes the first unit vector.
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    } else if !v.is_empty() {
        v.fill(0.0);
        v[0] = 1.0;
    }
}
