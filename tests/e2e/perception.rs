//! Vision and Voice over mutual TLS: the client streams, their counts and segments, the episodes they
//! leave in the episodic buffer, bad input naming its field, and the `modules.vision` flag stopping
//! and starting the actor.

use std::time::Duration;

use brainstem_client::v1::vision_client::VisionClient;
use brainstem_client::v1::voice_client::VoiceClient;
use brainstem_client::v1::{
    AudioChunk, EpisodeFilter, Frame, GetActorRequest, ListActorsRequest, RecentRequest,
    SetFlagOverrideRequest,
};
use tonic::Code;

use crate::harness::{eventually, violations};
use crate::inprocess::InProcess;

/// A mid-gray 160 × 120 frame, with a bright 32-pixel square at `x` when given.
fn scene(x: Option<u32>) -> Vec<u8> {
    let (w, h) = (160u32, 120u32);
    let mut data = vec![90u8; (w * h) as usize];
    if let Some(sx) = x {
        for y in 40..72 {
            for px in sx..sx + 32 {
                data[(y * w + px) as usize] = 240;
            }
        }
    }
    data
}

fn gray(source: &str, data: Vec<u8>) -> Frame {
    Frame {
        source: source.into(),
        width: 160,
        height: 120,
        format: "gray8".into(),
        data,
    }
}

/// Noise at −40 dBFS with 220 Hz tone bursts over `bursts` (ms), s16le at `rate`.
fn audio(rate: u32, seconds: f64, bursts: &[(u64, u64)]) -> Vec<u8> {
    let n = (f64::from(rate) * seconds) as usize;
    let mut seed: u32 = 99;
    let mut out = Vec::with_capacity(n * 2);
    for i in 0..n {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) * 0.02;
        let t = i as f64 / f64::from(rate);
        let ms = (t * 1000.0) as u64;
        let tone = if bursts.iter().any(|(a, b)| (*a..*b).contains(&ms)) {
            0.25 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()
        } else {
            0.0
        };
        let s = ((noise + tone) * 32767.0) as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn chunks(source: &str, rate: u32, pcm: &[u8], bytes: usize) -> Vec<AudioChunk> {
    pcm.chunks(bytes)
        .enumerate()
        .map(|(i, c)| AudioChunk {
            source: if i == 0 { source.into() } else { String::new() },
            sample_rate: rate,
            pcm: c.to_vec(),
        })
        .collect()
}

fn recent(source: &str) -> RecentRequest {
    RecentRequest {
        n: 100,
        filter: Some(EpisodeFilter {
            source: source.into(),
            ..EpisodeFilter::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_audio_become_counts_segments_and_episodes() {
    let daemon = InProcess::start(
        "",
        "[episodic]\nembedding_dimension = 64\n[voice]\nmax_chunk_bytes = 8000\n",
    )
    .await;
    let mut client = daemon.client().await;

    let actors = client
        .supervisor
        .list_actors(ListActorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .actors;
    for name in ["vision", "voice"] {
        let actor = actors
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(actor.kind, "actor");
    }

    // Five still frames (one kept, four duplicates), then a square moving 8 px a frame (six motions).
    let mut vision = VisionClient::new(client.channel.clone());
    let mut frames: Vec<Frame> = (0..5).map(|_| gray("cam-e2e", scene(None))).collect();
    frames.extend((0..6).map(|i| gray("cam-e2e", scene(Some(20 + 8 * i)))));
    let reply = vision
        .submit_frames(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.received, reply.duplicates, reply.motion_events),
        (11, 4, 6)
    );
    let motion = client
        .episodic
        .recent(recent("cam-e2e"))
        .await
        .unwrap()
        .into_inner()
        .episodes;
    assert_eq!(motion.len(), 6);
    for e in &motion {
        assert_eq!((e.kind.as_str(), e.source.as_str()), ("motion", "cam-e2e"));
        assert_eq!(e.embedding.len(), 64);
        for key in ["score", "bbox_x", "bbox_y", "bbox_width", "bbox_height"] {
            assert!(e.metadata.contains_key(key), "{key}: {e:?}");
        }
    }

    // Two bursts, in chunks of 4000 bytes (125 ms at 16 kHz), so both span chunk boundaries.
    let mut voice = VoiceClient::new(client.channel.clone());
    let bursts = [(400u64, 800u64), (1300, 1700)];
    let pcm = audio(16_000, 2.2, &bursts);
    let reply = voice
        .submit_audio(tokio_stream::iter(chunks("mic-e2e", 16_000, &pcm, 4000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.segments.len(), 2, "{reply:?}");
    assert_eq!(reply.audio_ms, 2200);
    for (s, (a, b)) in reply.segments.iter().zip(bursts) {
        assert!(
            s.start_ms.abs_diff(a) <= 50 && s.end_ms.abs_diff(b) <= 50,
            "{s:?}"
        );
    }
    let utterances = client
        .episodic
        .recent(recent("mic-e2e"))
        .await
        .unwrap()
        .into_inner()
        .episodes;
    assert_eq!(utterances.len(), 2);
    assert!(utterances.iter().all(|e| e.kind == "utterance"
        && e.metadata.contains_key("start_ms")
        && e.metadata.contains_key("peak_dbfs")));

    // Client-streaming methods are never deduplicated: an idempotency-key is accepted and ignored,
    // so the same stream sent twice is processed twice (the second frame is a duplicate of the first).
    for expected_duplicates in [0, 1] {
        let mut request =
            tonic::Request::new(tokio_stream::iter(vec![gray("cam-idem", scene(None))]));
        request
            .metadata_mut()
            .insert("idempotency-key", "same-key".parse().unwrap());
        let response = vision.submit_frames(request).await.unwrap();
        assert!(response.metadata().get("idempotency-replayed").is_none());
        let reply = response.into_inner();
        assert_eq!((reply.received, reply.duplicates), (1, expected_duplicates));
    }

    // Bad input names its field.
    let bad_frames: Vec<(Frame, &str)> = vec![
        (
            Frame {
                format: "bmp".into(),
                ..gray("cam-e2e", scene(None))
            },
            "format",
        ),
        (gray("cam-e2e", vec![0; 10]), "data"),
        (
            Frame {
                width: 5000,
                ..gray("cam-e2e", scene(None))
            },
            "width",
        ),
        (
            Frame {
                width: 0,
                height: 0,
                format: "png".into(),
                ..gray("cam-e2e", vec![0x89, b'P', b'N', b'G'])
            },
            "data",
        ),
    ];
    for (frame, field) in bad_frames {
        let status = vision
            .submit_frames(tokio_stream::iter(vec![frame]))
            .await
            .unwrap_err();
        assert!(
            violations(&status).contains(&field.to_owned()),
            "{field}: {status:?}"
        );
    }
    let bad_audio: Vec<(AudioChunk, &str)> = vec![
        (
            AudioChunk {
                source: "mic-e2e".into(),
                sample_rate: 16_000,
                pcm: vec![0; 3],
            },
            "pcm",
        ),
        (
            AudioChunk {
                source: "mic-e2e".into(),
                sample_rate: 96_000,
                pcm: vec![0; 4],
            },
            "sample_rate",
        ),
        (
            AudioChunk {
                source: "mic-e2e".into(),
                sample_rate: 16_000,
                pcm: vec![0; 8002],
            },
            "pcm",
        ),
    ];
    for (chunk, field) in bad_audio {
        let status = voice
            .submit_audio(tokio_stream::iter(vec![chunk]))
            .await
            .unwrap_err();
        assert_eq!(violations(&status), [field], "{status:?}");
    }
    // The same through brainstemctl, from files.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::bin("brainstemctl"))
            .arg("--endpoint")
            .arg(daemon.addr().to_string())
            .arg("--state-dir")
            .arg(&daemon.state_dir)
            .args(["-o", "json"])
            .args(args)
            .output()
            .expect("run brainstemctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            serde_json::from_str::<serde_json::Value>(text.trim())
                .unwrap_or(serde_json::Value::Null),
        )
    };
    let files = tempfile::tempdir().unwrap();
    let still = files.path().join("still.gray");
    let moved = files.path().join("moved.gray");
    let speech = files.path().join("speech.pcm");
    std::fs::write(&still, scene(None)).unwrap();
    std::fs::write(&moved, scene(Some(60))).unwrap();
    std::fs::write(&speech, audio(16_000, 1.5, &[(300, 800)])).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (code, counts) = ctl(&[
        "vision",
        "submit",
        "--source",
        "cli-cam",
        "--format",
        "gray8",
        "--width",
        "160",
        "--height",
        "120",
        &path(&still),
        &path(&still),
        &path(&moved),
    ]);
    assert_eq!(code, Some(0), "{counts}");
    assert_eq!(
        counts,
        serde_json::json!({"received": 3, "duplicates": 1, "motion_events": 1})
    );
    let (code, found) = ctl(&[
        "voice",
        "submit",
        "--source",
        "cli-mic",
        "--chunk-bytes",
        "3000",
        &path(&speech),
    ]);
    assert_eq!(code, Some(0), "{found}");
    assert_eq!(
        found["segments"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );
    assert_eq!(daemon.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modules_vision_flag_stops_and_starts_the_actor() {
    let daemon = InProcess::start("", "[flags]\nkeep_alive_seconds = 1\nsettle_ms = 50\n").await;
    let mut client = daemon.client().await;
    let state = |client: &brainstem_client::Client| {
        let mut supervisor = client.supervisor.clone();
        async move {
            supervisor
                .get_actor(GetActorRequest {
                    name: "vision".into(),
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().actor)
                .map(|a| a.state)
        }
    };
    let flip = |variant: &str| SetFlagOverrideRequest {
        key: "modules.vision".into(),
        state: String::new(),
        default_variant: variant.into(),
        rollout: None,
    };

    client.flags.set_override(flip("off")).await.unwrap();
    eventually("vision stopped", Duration::from_secs(10), || {
        let s = state(&client);
        async move { (s.await.as_deref() == Some("stopped")).then_some(()) }
    })
    .await;
    let mut vision = VisionClient::new(client.channel.clone());
    let status = vision
        .submit_frames(tokio_stream::iter(vec![gray("cam", scene(None))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    client.flags.set_override(flip("on")).await.unwrap();
    eventually("vision running", Duration::from_secs(10), || {
        let s = state(&client);
        async move { (s.await.as_deref() == Some("running")).then_some(()) }
    })
    .await;
    let reply = vision
        .submit_frames(tokio_stream::iter(vec![gray("cam", scene(None))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.received, 1);
    assert_eq!(daemon.stop().await, 0);
}
