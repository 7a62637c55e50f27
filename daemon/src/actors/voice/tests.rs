//! Voice: VAD on generated tone bursts in noise, chunked anyhow; every bad input; an injected hang.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;
use crate::runtime::tasks::Tasks;
use crate::store::Store;
use crate::supervisor::config::SupervisorConfig;
use crate::supervisor::{ActorState, WatchdogPing};

fn settings() -> Settings {
    Settings::from_config(&config::VoiceConfig::default(), 32)
}

/// `seconds` of white noise at −40 dBFS with tone bursts (220 Hz plus harmonics, −12 dBFS) over
/// `bursts` (ms), as s16le bytes.
pub fn audio(rate: u32, seconds: f64, bursts: &[(u64, u64)]) -> Vec<u8> {
    let n = (f64::from(rate) * seconds) as usize;
    let mut seed: u32 = 12345;
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) * 0.02;
        let t = i as f64 / f64::from(rate);
        let ms = (t * 1000.0) as u64;
        let tone = if bursts.iter().any(|(a, b)| (*a..*b).contains(&ms)) {
            let w = 2.0 * std::f64::consts::PI * 220.0 * t;
            0.2 * w.sin() + 0.05 * (2.0 * w).sin() + 0.02 * (3.0 * w).sin()
        } else {
            0.0
        };
        let s = ((noise + tone) * 32767.0).clamp(-32768.0, 32767.0) as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn detect(rate: u32, pcm: &[u8], chunk_samples: usize) -> Vec<Segment> {
    let mut vad = Vad::new(rate, settings().params);
    let mut segments = Vec::new();
    for chunk in pcm.chunks(chunk_samples * 2) {
        vad.push(chunk, &mut segments);
    }
    vad.finish(&mut segments);
    segments
}

const BURSTS: &[(u64, u64)] = &[(500, 900), (1500, 1750), (2600, 3400), (3900, 4300)];

#[test]
fn each_tone_burst_in_noise_is_found_within_50_ms_whatever_the_chunking() {
    for rate in [8_000, 16_000, 22_050, 44_100, 48_000] {
        let pcm = audio(rate, 4.3, BURSTS);
        for chunk in [97, 1234, 16_000, usize::MAX / 4] {
            let segments = detect(rate, &pcm, chunk);
            assert_eq!(
                segments.len(),
                BURSTS.len(),
                "{rate} Hz, chunks of {chunk}: {segments:?}"
            );
            for (s, (a, b)) in segments.iter().zip(BURSTS) {
                assert!(
                    s.start_ms.abs_diff(*a) <= 50 && s.end_ms.abs_diff(*b) <= 50,
                    "{rate} Hz, chunks of {chunk}: {s:?} vs {a}..{b}"
                );
                assert!(s.peak_dbfs >= s.mean_dbfs && s.mean_dbfs > -30.0, "{s:?}");
            }
        }
    }
}

#[test]
fn noise_alone_and_silence_have_no_utterance() {
    assert!(detect(16_000, &audio(16_000, 3.0, &[]), 1000).is_empty());
    assert!(detect(16_000, &vec![0u8; 64_000], 1000).is_empty());
}

#[test]
fn a_burst_still_open_at_the_end_of_the_stream_is_closed_there() {
    let pcm = audio(16_000, 1.0, &[(600, 1000)]);
    let segments = detect(16_000, &pcm, 500);
    assert_eq!(segments.len(), 1);
    assert!(segments[0].start_ms.abs_diff(600) <= 50);
    assert!(segments[0].end_ms.abs_diff(1000) <= 50, "{segments:?}");
}

#[test]
fn utterance_embeddings_are_unit_length() {
    let segments = detect(16_000, &audio(16_000, 1.5, &[(500, 900)]), 1000);
    let e = vad::embedding(&segments[0], 384);
    assert_eq!(e.len(), 384);
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
}

fn fields(err: VoiceError) -> Vec<String> {
    match err {
        VoiceError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn every_bad_chunk_is_refused_naming_its_field() {
    let s = settings();
    let fresh = AudioStream::default();
    let chunk = |source: &str, rate: u32, bytes: usize| Chunk {
        source: source.into(),
        sample_rate: rate,
        pcm: vec![0; bytes],
    };
    assert!(validate(&s, &fresh, &chunk("mic", 16_000, 320)).is_ok());
    for (c, field) in [
        (chunk("mic", 16_000, 321), "pcm"),
        (chunk("mic", 16_000, s.max_chunk_bytes + 2), "pcm"),
        (chunk("mic", 7_999, 320), "sample_rate"),
        (chunk("mic", 48_001, 320), "sample_rate"),
        (chunk("mic", 0, 320), "sample_rate"),
        (chunk("", 16_000, 320), "source"),
    ] {
        let got = fields(validate(&s, &fresh, &c).unwrap_err());
        assert_eq!(got, [field], "{c:?}");
    }
    // Later chunks: the same rate, the same (or no) source.
    let started = AudioStream {
        source: "mic".into(),
        vad: Some(Box::new(Vad::new(16_000, s.params))),
        ..AudioStream::default()
    };
    assert!(validate(&s, &started, &chunk("", 16_000, 320)).is_ok());
    assert_eq!(
        fields(validate(&s, &started, &chunk("mic", 8_000, 320)).unwrap_err()),
        ["sample_rate"]
    );
    assert_eq!(
        fields(validate(&s, &started, &chunk("other", 16_000, 320)).unwrap_err()),
        ["source"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stuck_vad_pass_is_seen_frozen_and_the_actor_restarted() {
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
        ..crate::actors::vision::config::perception_actor()
    };
    let voice = Voice::register(
        &mut builder,
        Settings {
            hang_source: Some("stuck".into()),
            ..settings()
        },
        actor,
        None,
    )
    .unwrap();
    let tasks = Tasks::new();
    let token = CancellationToken::new();
    let pings = Arc::new(AtomicU64::new(0));
    let ping: WatchdogPing = Arc::new(move || {
        pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let supervisor = builder
        .start(&tasks, token.clone(), Some((Duration::from_secs(1), ping)))
        .await;

    let stuck = voice.clone();
    let call = tokio::spawn(async move {
        let mut stream = AudioStream::default();
        stuck
            .chunk(
                &mut stream,
                Chunk {
                    source: "stuck".into(),
                    sample_rate: 16_000,
                    pcm: vec![0; 320],
                },
            )
            .await
    });
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
    assert!(matches!(call.await.unwrap(), Err(VoiceError::Actor(_))));
    // The new incarnation serves a stream to the end.
    let mut stream = AudioStream::default();
    let pcm = audio(16_000, 1.2, &[(300, 700)]);
    voice
        .chunk(
            &mut stream,
            Chunk {
                source: "mic".into(),
                sample_rate: 16_000,
                pcm,
            },
        )
        .await
        .unwrap();
    voice.finish(&mut stream).await.unwrap();
    assert_eq!(stream.segments.len(), 1, "{:?}", stream.segments);
    token.cancel();
    supervisor.wait_stopped().await;
    tasks.close();
    tasks.wait().await;
}
