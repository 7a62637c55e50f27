//! The vision hot path allocates nothing per frame in steady state, counted by a global allocator
//! (its own test binary, so the library's other tests run under the system allocator). Also: a PNG
//! whose header claims 60000 × 60000 is refused without a large allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use brainstemd::actors::vision::config::VisionConfig;
use brainstemd::actors::vision::decode::{self, BufferPool};
use brainstemd::actors::vision::frame::{self, PixelView, Scratch, SourceState};
use brainstemd::actors::vision::{Format, Settings};
use image::ImageEncoder;

struct Counting;

thread_local! {
    /// Counting is per thread and only while a test asks for it.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, bytes) made by `f` on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    BYTES.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get))
}

fn scene(w: u32, h: u32, square_x: Option<u32>) -> Vec<u8> {
    let mut data = vec![90u8; (w * h) as usize];
    if let Some(sx) = square_x {
        for y in 100..160 {
            for x in sx..sx + 60 {
                data[(y * w + x) as usize] = 240;
            }
        }
    }
    data
}

#[test]
fn steady_state_frames_allocate_nothing() {
    let settings = Settings::from_config(&VisionConfig::default(), 384);
    let params = settings.params;
    let (w, h) = (640, 480);
    // Prepared outside the counted section: the frames a client would have sent.
    let still = scene(w, h, None);
    let moving: Vec<Vec<u8>> = (0..8).map(|i| scene(w, h, Some(40 + 60 * i))).collect();
    let mut state = SourceState::new(&params);
    let mut scratch = Scratch::new(&params);
    let mut pool = BufferPool::new(4);
    fn view(data: &[u8], w: u32, h: u32) -> PixelView<'_> {
        PixelView {
            data,
            width: w,
            height: h,
            layout: frame::Layout::GRAY8,
        }
    }
    // Warm-up.
    frame::process(&view(&still, w, h), &mut state, &mut scratch, &params);
    let buf = pool.take((w * h) as usize);
    pool.give(buf);

    let (results, allocations, bytes) = counted(|| {
        let mut motion = 0;
        let mut duplicates = 0;
        for round in 0..50 {
            let data = if round % 2 == 0 {
                &still
            } else {
                &moving[round % moving.len()]
            };
            // A pooled buffer per frame, as the decode path takes one.
            let buf = pool.take((w * h) as usize);
            let r = frame::process(&view(data, w, h), &mut state, &mut scratch, &params);
            pool.give(buf);
            motion += usize::from(r.motion.is_some());
            let r = frame::process(&view(data, w, h), &mut state, &mut scratch, &params);
            duplicates += usize::from(r.duplicate);
        }
        (motion, duplicates)
    });
    assert_eq!(
        (allocations, bytes),
        (0, 0),
        "100 frames allocated {allocations} times"
    );
    assert!(results.0 > 40, "the frames did move: {results:?}");
    assert_eq!(results.1, 50, "each frame repeated is a duplicate");
}

#[test]
fn a_png_claiming_60000_by_60000_is_refused_without_allocating_it() {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[7u8; 64], 8, 8, image::ExtendedColorType::L8)
        .unwrap();
    png[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let settings = Settings::from_config(&VisionConfig::default(), 384);
    let mut pool = BufferPool::new(4);
    let (result, _, bytes) =
        counted(|| decode::decode(Format::Png, &png, (0, 0), &settings, &mut pool).map(|_| ()));
    let err = result.unwrap_err();
    assert_eq!(err.field, "data");
    assert!(err.message.contains("larger than the maximum"), "{err:?}");
    // 60000 × 60000 gray is 3.6 GB; the refusal costs the decoder's small header state.
    assert!(bytes < 1 << 20, "{bytes} bytes allocated");
}
