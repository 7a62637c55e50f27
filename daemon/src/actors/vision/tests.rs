//! Vision: dedup and motion on generated frames, every bad input, decoding, and an injected hang
//! seen frozen by the watchdog.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use image::ImageEncoder;
use tokio_util::sync::CancellationToken;

use super::actor::{Working, handle};
use super::frame::{self, Layout, PixelView, Scratch, SourceState};
use super::*;
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::store::Store;
use crate::supervisor::config::SupervisorConfig;
use crate::supervisor::{ActorState, WatchdogPing};

pub fn settings() -> Settings {
    Settings::from_config(&config::VisionConfig::default(), 16)
}

/// A `w × h` gray frame: a mid-gray background with mild texture and a bright `side`-pixel square at
/// (`x`, `y`).
pub fn scene(w: u32, h: u32, square: Option<(u32, u32, u32)>) -> Vec<u8> {
    let mut data = vec![0u8; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let mut v = 80 + ((x / 16 + y / 16) % 2) as u8 * 20;
            if let Some((sx, sy, side)) = square {
                if (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y) {
                    v = 240;
                }
            }
            data[(y * w + x) as usize] = v;
        }
    }
    data
}

fn gray(source: &str, w: u32, h: u32, data: Vec<u8>) -> Frame {
    Frame {
        source: source.into(),
        width: w,
        height: h,
        format: Format::Gray8,
        data,
    }
}

#[test]
fn a_static_scene_is_deduplicated_and_a_moving_square_is_motion() {
    let s = settings();
    let mut working = Working::new(&s);
    let (w, h) = (160, 120);
    // Static: the first frame is kept, the next nine are near-duplicates, no motion.
    for i in 0..10 {
        let p = handle(&s, &mut working, &gray("cam", w, h, scene(w, h, None))).unwrap();
        assert_eq!(p.result.first, i == 0, "frame {i}");
        assert_eq!(p.result.duplicate, i > 0, "frame {i}: {:?}", p.result);
        assert_eq!(p.result.motion, None);
    }
    // A square moving 8 px a frame: every frame is motion, its box covers the square.
    let mut motions = 0;
    for i in 0..10u32 {
        let (x, y) = (20 + 8 * i, 40);
        let p = handle(
            &s,
            &mut working,
            &gray("cam", w, h, scene(w, h, Some((x, y, 32)))),
        )
        .unwrap();
        assert!(!p.result.duplicate, "frame {i}: {:?}", p.result);
        let bbox = p.result.motion.expect("motion");
        motions += 1;
        assert!(
            bbox.x <= x && bbox.x + bbox.width >= x + 32,
            "{i}: {bbox:?}"
        );
        assert!(
            bbox.y <= y && bbox.y + bbox.height >= y + 32,
            "{i}: {bbox:?}"
        );
        assert!(
            bbox.width < w && bbox.height < h,
            "the box is the region, not the frame"
        );
        assert_eq!(p.embedding.as_ref().map(Vec::len), Some(16));
    }
    assert_eq!(motions, 10);
    // Another source has its own reference: its first frame is a first frame.
    let p = handle(&s, &mut working, &gray("other", w, h, scene(w, h, None))).unwrap();
    assert!(p.result.first);
}

#[test]
fn slow_drift_accumulates_against_the_kept_frame() {
    let s = settings();
    let mut working = Working::new(&s);
    let (w, h) = (64, 64);
    let mut saw_motion = false;
    // A square moving one pixel a frame: each step alone is below the threshold, but duplicates do not
    // replace the reference, so the difference builds up until it counts.
    for i in 0..30u32 {
        let p = handle(
            &s,
            &mut working,
            &gray("cam", w, h, scene(w, h, Some((i, 10, 20)))),
        )
        .unwrap();
        saw_motion |= p.result.motion.is_some();
    }
    assert!(saw_motion);
}

#[test]
fn rgb_and_gray_of_the_same_picture_hash_alike() {
    let params = settings().params;
    let (w, h) = (96, 64);
    let g = scene(w, h, Some((10, 10, 30)));
    let rgb: Vec<u8> = g.iter().flat_map(|v| [*v, *v, *v]).collect();
    let mut scratch = Scratch::new(&params);
    let mut a = SourceState::new(&params);
    let mut b = SourceState::new(&params);
    let view = |data, layout| PixelView {
        data,
        width: w,
        height: h,
        layout,
    };
    frame::process(&view(&g[..], Layout::GRAY8), &mut a, &mut scratch, &params);
    frame::process(&view(&rgb[..], Layout::RGB8), &mut b, &mut scratch, &params);
    assert_eq!(a.grid(), b.grid());
    assert_eq!(
        frame::dhash(a.grid(), params.grid),
        frame::dhash(b.grid(), params.grid)
    );
}

fn violation_fields(err: VisionError) -> Vec<String> {
    match err {
        VisionError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn every_bad_frame_is_refused_naming_its_field() {
    let s = settings();
    let ok = gray("cam", 4, 4, vec![0; 16]);
    assert!(validate(&s, &ok).is_ok());
    let cases: Vec<(Frame, &str)> = vec![
        (gray("cam", 4, 4, vec![0; 15]), "data"),
        (
            Frame {
                format: Format::Rgb8,
                ..gray("cam", 4, 4, vec![0; 16])
            },
            "data",
        ),
        (gray("", 4, 4, vec![0; 16]), "source"),
        (gray(&"s".repeat(300), 4, 4, vec![0; 16]), "source"),
        (gray("cam", 0, 4, vec![0; 16]), "width"),
        (gray("cam", 4, 0, vec![0; 16]), "height"),
        (gray("cam", 4097, 1, vec![0; 4097]), "width"),
        (gray("cam", 1, 4097, vec![0; 4097]), "height"),
        (gray("cam", 4, 4, vec![]), "data"),
    ];
    for (frame, field) in cases {
        let fields = violation_fields(validate(&s, &frame).unwrap_err());
        assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    }
}

pub fn png(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, w, h, image::ExtendedColorType::L8)
        .unwrap();
    out
}

/// A valid PNG whose header claims `w × h` (IHDR patched, CRC fixed): a few hundred bytes.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = png(8, 8, &[7; 64]);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height; the CRC covers type + data.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn png_and_jpeg_are_decoded_and_checked_against_the_maximum_first() {
    let s = settings();
    let mut working = Working::new(&s);
    let (w, h) = (64, 48);
    let pixels = scene(w, h, Some((8, 8, 16)));
    let encoded = Frame {
        source: "png".into(),
        width: 0,
        height: 0,
        format: Format::Png,
        data: png(w, h, &pixels),
    };
    let p = handle(&s, &mut working, &encoded).unwrap();
    assert_eq!((p.width, p.height), (w, h));
    assert!(p.result.first);

    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(&pixels, w, h, image::ExtendedColorType::L8)
        .unwrap();
    let p = handle(
        &s,
        &mut working,
        &Frame {
            source: "jpeg".into(),
            format: Format::Jpeg,
            data: jpeg.clone(),
            ..encoded.clone()
        },
    )
    .unwrap();
    assert_eq!((p.width, p.height), (w, h));

    // A claimed size that disagrees with the image names the field.
    let err = handle(
        &s,
        &mut working,
        &Frame {
            width: 65,
            ..encoded.clone()
        },
    )
    .unwrap_err();
    assert_eq!(violation_fields(err), ["width"]);

    // Garbage, a truncated file, and a header claiming 60000 × 60000.
    for data in [
        vec![1, 2, 3],
        encoded.data[..40].to_vec(),
        png_claiming(60_000, 60_000),
    ] {
        let err = handle(
            &s,
            &mut working,
            &Frame {
                data,
                ..encoded.clone()
            },
        )
        .unwrap_err();
        assert_eq!(violation_fields(err), ["data"]);
    }
    let err = handle(
        &s,
        &mut working,
        &Frame {
            data: png_claiming(60_000, 60_000),
            ..encoded.clone()
        },
    )
    .unwrap_err();
    let VisionError::Invalid(v) = err else {
        unreachable!()
    };
    assert!(
        v[0].description.contains("larger than the maximum"),
        "{v:?}"
    );
    // Within image's own limits but above a configured maximum: refused by the header as well.
    let small = Settings {
        max_width: 32,
        ..settings()
    };
    let err = handle(&small, &mut Working::new(&small), &encoded).unwrap_err();
    let VisionError::Invalid(v) = err else {
        unreachable!()
    };
    assert_eq!(v[0].field, "data");
    assert!(v[0].description.contains("32 × 4096"), "{v:?}");
}

#[test]
fn the_least_recently_used_source_is_forgotten_beyond_the_limit() {
    let s = Settings {
        max_sources: 2,
        ..settings()
    };
    let mut working = Working::new(&s);
    let frame = |src: &str| gray(src, 16, 16, scene(16, 16, None));
    for src in ["a", "b", "a", "c"] {
        handle(&s, &mut working, &frame(src)).unwrap();
    }
    assert_eq!(working.sources.len(), 2);
    assert!(working.sources.contains_key("a") && working.sources.contains_key("c"));
    assert!(handle(&s, &mut working, &frame("b")).unwrap().result.first);
}

#[test]
fn embeddings_are_unit_length_and_of_the_requested_dimension() {
    let params = settings().params;
    let grid = vec![9u8; params.grid * params.grid];
    let uniform = frame::embedding(&grid, params.grid, 384);
    assert_eq!(uniform.len(), 384);
    assert_eq!(uniform[0], 1.0, "uniform frames get the first unit vector");
    let mut textured = grid.clone();
    textured[5] = 200;
    let e = frame::embedding(&textured, params.grid, 384);
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert!(
        e[361..].iter().all(|x| *x == 0.0),
        "19 × 19 thumbnail, zero-padded"
    );
}

/// The supervisor with only the vision actor, on a paused clock.
async fn supervised(
    settings: Settings,
) -> (
    Vision,
    crate::supervisor::Supervisor,
    Tasks,
    CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &Config::default().store).unwrap();
    let config = SupervisorConfig {
        hung_after_seconds: 3,
        hung_checks: 3,
        backoff_jitter_percent: 0,
        ..SupervisorConfig::default()
    };
    let mut builder = crate::supervisor::SupervisorBuilder::new(config, store).seed(1);
    let actor = crate::supervisor::config::ActorConfig {
        stop_deadline_ms: 500,
        ..config::perception_actor()
    };
    let vision = Vision::register(&mut builder, settings, actor, None).unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let pings = Arc::new(AtomicU64::new(0));
    let ping: WatchdogPing = Arc::new(move || {
        pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let supervisor = builder
        .start(&tasks, token.clone(), Some((Duration::from_secs(1), ping)))
        .await;
    (vision, supervisor, tasks, token, dir)
}

#[tokio::test(start_paused = true)]
async fn a_stuck_frame_is_seen_frozen_and_the_actor_restarted() {
    let (vision, supervisor, tasks, token, _dir) = supervised(Settings {
        hang_source: Some("stuck".into()),
        ..settings()
    })
    .await;
    let w = 16;
    let ok = vision
        .submit(gray("cam", w, w, scene(w, w, None)))
        .await
        .unwrap();
    assert!(!ok.duplicate);

    let stuck = vision.clone();
    let call =
        tokio::spawn(async move { stuck.submit(gray("stuck", w, w, scene(w, w, None))).await });
    let started = tokio::time::Instant::now();
    loop {
        let info = supervisor.get(ACTOR_NAME).unwrap();
        if info.kills == 1 && info.state == ActorState::Running {
            assert!(
                info.last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("frozen")),
                "{info:?}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The caller of the stuck frame got an answer (the actor went away without replying)…
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, VisionError::Actor(_)), "{err:?}");
    // …and the new incarnation serves: its first frame of "cam" is a first frame again.
    let again = vision
        .submit(gray("cam", w, w, scene(w, w, None)))
        .await
        .unwrap();
    assert!(!again.duplicate);
    token.cancel();
    supervisor.wait_stopped().await;
    tasks.close();
    tasks.wait().await;
}

#[test]
fn sixteen_bit_and_rgba_pngs_give_the_same_grid_as_gray8() {
    let s = settings();
    let (w, h) = (48, 40);
    let gray8 = scene(w, h, Some((5, 5, 20)));
    let l16: Vec<u8> = gray8
        .iter()
        .flat_map(|v| (u16::from(*v) << 8 | 0x7f).to_ne_bytes())
        .collect();
    let rgba: Vec<u8> = gray8.iter().flat_map(|v| [*v, *v, *v, 255]).collect();
    let encode = |data: &[u8], color| {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(data, w, h, color)
            .unwrap();
        out
    };
    let grid_of = |format, data: Vec<u8>| {
        let mut working = Working::new(&s);
        let frame = Frame {
            source: "x".into(),
            width: if format == Format::Gray8 { w } else { 0 },
            height: if format == Format::Gray8 { h } else { 0 },
            format,
            data,
        };
        handle(&s, &mut working, &frame).unwrap();
        working.sources["x"].grid().to_vec()
    };
    let reference = grid_of(Format::Gray8, gray8.clone());
    assert_eq!(
        grid_of(Format::Png, encode(&l16, image::ExtendedColorType::L16)),
        reference
    );
    assert_eq!(
        grid_of(Format::Png, encode(&rgba, image::ExtendedColorType::Rgba8)),
        reference
    );
}
