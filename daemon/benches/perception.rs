//! Perception benchmarks (not tests): frames/s of 640 × 480 gray through the vision hot path
//! (downscale, dHash, motion) and PNG decode plus processing; the voice detector's real-time factor.
//!
//! `cargo bench -p brainstemd --bench perception`. Criterion reports time per frame (µs) with
//! throughput in frames/s; the VAD bench reports time per second of 16 kHz audio, so its real-time
//! factor is that time divided by one second (also printed). docs/PERCEPTION.md says what they mean.

use std::time::{Duration, Instant};

use brainstemd::actors::vision::config::VisionConfig;
use brainstemd::actors::vision::decode::{self, BufferPool};
use brainstemd::actors::vision::frame::{self, Layout, PixelView, Scratch, SourceState};
use brainstemd::actors::vision::{Format, Settings};
use brainstemd::actors::voice::config::VoiceConfig;
use brainstemd::actors::voice::vad::Vad;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::ImageEncoder;

const W: u32 = 640;
const H: u32 = 480;

fn scene(square_x: u32) -> Vec<u8> {
    let mut data: Vec<u8> = (0..W * H).map(|i| (80 + (i % 7) * 3) as u8).collect();
    for y in 180..260 {
        for x in square_x..square_x + 80 {
            data[(y * W + x) as usize] = 240;
        }
    }
    data
}

fn vision(c: &mut Criterion) {
    let settings = Settings::from_config(&VisionConfig::default(), 384);
    let params = settings.params;
    let frames: Vec<Vec<u8>> = (0..16).map(|i| scene(20 + 30 * i)).collect();
    let mut group = c.benchmark_group("vision");
    group.throughput(Throughput::Elements(1));
    group.bench_function("gray8_640x480_moving", |b| {
        let mut state = SourceState::new(&params);
        let mut scratch = Scratch::new(&params);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % frames.len();
            let view = PixelView {
                data: &frames[i],
                width: W,
                height: H,
                layout: Layout::GRAY8,
            };
            frame::process(&view, &mut state, &mut scratch, &params)
        })
    });
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&frames[0], W, H, image::ExtendedColorType::L8)
        .unwrap();
    group.bench_function("png_640x480_decode_and_process", |b| {
        let mut state = SourceState::new(&params);
        let mut scratch = Scratch::new(&params);
        let mut pool = BufferPool::new(4);
        b.iter(|| {
            let d = decode::decode(Format::Png, &png, (0, 0), &settings, &mut pool).unwrap();
            let view = PixelView {
                data: &d.pixels,
                width: d.width,
                height: d.height,
                layout: d.layout,
            };
            let r = frame::process(&view, &mut state, &mut scratch, &params);
            pool.give(d.pixels);
            r
        })
    });
    group.finish();
}

fn voice(c: &mut Criterion) {
    let rate = 16_000u32;
    let params = VoiceConfig::default().vad_params();
    // One second: noise with a tone in its middle half.
    let mut seed: u32 = 7;
    let pcm: Vec<u8> = (0..rate)
        .flat_map(|i| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) * 0.02;
            let t = f64::from(i) / f64::from(rate);
            let tone = if (0.25..0.75).contains(&t) {
                0.25 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()
            } else {
                0.0
            };
            (((noise + tone) * 32767.0) as i16).to_le_bytes()
        })
        .collect();
    let mut group = c.benchmark_group("voice");
    group.throughput(Throughput::Bytes(pcm.len() as u64));
    group.bench_function("vad_one_second_16khz", |b| {
        b.iter(|| {
            let mut vad = Vad::new(rate, params);
            let mut segments = Vec::new();
            for chunk in pcm.chunks(3200) {
                vad.push(chunk, &mut segments);
            }
            vad.finish(&mut segments);
            segments
        })
    });
    group.finish();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_millis(500) {
        let mut vad = Vad::new(rate, params);
        let mut segments = Vec::new();
        vad.push(&pcm, &mut segments);
        n += 1;
    }
    let per_second = started.elapsed() / n;
    println!(
        "voice: real-time factor {:.5} ({per_second:?} per second of 16 kHz audio)",
        per_second.as_secs_f64()
    );
}

criterion_group!(benches, vision, voice);
criterion_main!(benches);
