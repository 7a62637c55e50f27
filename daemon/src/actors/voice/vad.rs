//! Voice activity detection on PCM s16le mono, chunk by chunk.
//!
//! The signal is cut into 10 ms frames (a partial frame at the end of a chunk waits for the next
//! chunk, so nothing depends on where chunks end). Per frame: energy (mean square, full scale = 1)
//! and zero-crossing rate. A frame is *speech* when its energy is at least `ratio` times the noise
//! floor, above an absolute minimum, and its zero-crossing rate is at most `max_zcr` (broadband noise
//! crosses zero about every other sample; voiced sound far less often). The noise floor adapts on
//! non-speech frames: it follows a quieter frame at once and a louder one slowly (5 % per frame), so
//! a burst does not raise it. A segment starts after `min_speech` of consecutive speech frames (at the
//! first of them) and ends after `hangover` without speech (at the end of the last speech frame). Band
//! energies (Goertzel filters at 16 log-spaced frequencies) are summed over a segment's speech frames
//! for its embedding.

/// Frames are this long.
pub const FRAME_MS: u64 = 10;
/// Goertzel bands for the embedding.
pub const BANDS: usize = 16;

/// VAD parameters (from `[voice]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// Speech needs energy ≥ ratio × noise floor.
    pub ratio: f64,
    /// … and ≥ this (mean square, full scale = 1).
    pub min_energy: f64,
    /// … and a zero-crossing rate (crossings per sample) ≤ this.
    pub max_zcr: f64,
    /// Consecutive speech frames before a segment starts.
    pub min_speech_frames: u32,
    /// Non-speech frames that end a segment.
    pub hangover_frames: u32,
}

/// One utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Frame energy in dB relative to full scale: the loudest speech frame's, and the mean over the
    /// speech frames (of the mean squares).
    pub peak_dbfs: f32,
    pub mean_dbfs: f32,
    /// Summed band powers over the speech frames, lowest band first.
    pub bands: [f32; BANDS],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Silence,
    /// Speech frames in a row, since `start` (a frame index).
    Onset {
        start: u64,
        frames: u32,
    },
    /// In a segment since `start`; `last_speech` is the last speech frame; `quiet` frames since.
    Speech {
        start: u64,
        last_speech: u64,
        quiet: u32,
    },
}

/// The detector's state for one stream.
#[derive(Debug, Clone)]
pub struct Vad {
    rate: u32,
    frame_len: usize,
    params: VadParams,
    partial: Vec<i16>,
    /// Index of the next whole frame.
    frame_index: u64,
    samples: u64,
    noise_floor: Option<f64>,
    phase: Phase,
    coefficients: [f64; BANDS],
    bands: [f64; BANDS],
    peak: f64,
    energy_sum: f64,
    speech_frames: u32,
}

impl Vad {
    pub fn new(rate: u32, params: VadParams) -> Vad {
        let frame_len = (rate as usize / 100).max(1);
        let mut coefficients = [0f64; BANDS];
        let top = (f64::from(rate) * 0.45).min(8000.0);
        for (i, c) in coefficients.iter_mut().enumerate() {
            let f = 100.0 * (top / 100.0).powf(i as f64 / (BANDS - 1) as f64);
            *c = 2.0 * (2.0 * std::f64::consts::PI * f / f64::from(rate)).cos();
        }
        Vad {
            rate,
            frame_len,
            params,
            partial: Vec::with_capacity(frame_len),
            frame_index: 0,
            samples: 0,
            noise_floor: None,
            phase: Phase::Silence,
            coefficients,
            bands: [0.0; BANDS],
            peak: 0.0,
            energy_sum: 0.0,
            speech_frames: 0,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Audio received so far, in milliseconds.
    pub fn elapsed_ms(&self) -> u64 {
        self.samples * 1000 / u64::from(self.rate)
    }

    /// Feeds little-endian s16 samples (an even number of bytes); closed segments go to `out`.
    pub fn push(&mut self, pcm: &[u8], out: &mut Vec<Segment>) {
        for pair in pcm.chunks_exact(2) {
            self.partial.push(i16::from_le_bytes([pair[0], pair[1]]));
            self.samples += 1;
            if self.partial.len() == self.frame_len {
                self.frame(out);
                self.partial.clear();
            }
        }
    }

    /// Ends the stream: a segment still open closes at its last speech frame.
    pub fn finish(&mut self, out: &mut Vec<Segment>) {
        if let Phase::Speech {
            start, last_speech, ..
        } = self.phase
        {
            out.push(self.segment(start, last_speech));
        }
        self.phase = Phase::Silence;
        self.reset_accumulators();
    }

    fn frame_start_ms(&self, index: u64) -> u64 {
        index * self.frame_len as u64 * 1000 / u64::from(self.rate)
    }

    fn segment(&self, start: u64, last_speech: u64) -> Segment {
        let n = f64::from(self.speech_frames.max(1));
        let db = |e: f64| (10.0 * e.max(1e-12).log10()) as f32;
        let mut bands = [0f32; BANDS];
        for (b, v) in bands.iter_mut().zip(self.bands.iter()) {
            *b = *v as f32;
        }
        Segment {
            start_ms: self.frame_start_ms(start),
            end_ms: self.frame_start_ms(last_speech + 1),
            peak_dbfs: db(self.peak),
            mean_dbfs: db(self.energy_sum / n),
            bands,
        }
    }

    fn reset_accumulators(&mut self) {
        self.bands = [0.0; BANDS];
        self.peak = 0.0;
        self.energy_sum = 0.0;
        self.speech_frames = 0;
    }

    fn accumulate(&mut self, energy: f64) {
        self.peak = self.peak.max(energy);
        self.energy_sum += energy;
        self.speech_frames += 1;
        for (band, c) in self.bands.iter_mut().zip(self.coefficients.iter()) {
            let (mut s1, mut s2) = (0f64, 0f64);
            for sample in &self.partial {
                let s = f64::from(*sample) / 32768.0 + c * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            *band += (s1 * s1 + s2 * s2 - c * s1 * s2) / self.frame_len as f64;
        }
    }

    fn frame(&mut self, out: &mut Vec<Segment>) {
        let index = self.frame_index;
        self.frame_index += 1;
        let n = self.partial.len() as f64;
        let mut energy = 0f64;
        let mut crossings = 0u32;
        let mut previous = self.partial[0];
        for sample in &self.partial {
            let s = f64::from(*sample) / 32768.0;
            energy += s * s;
            if (previous < 0) != (*sample < 0) {
                crossings += 1;
            }
            previous = *sample;
        }
        energy /= n;
        let zcr = f64::from(crossings) / n;
        let floor = *self.noise_floor.get_or_insert(energy.max(1e-10));
        let p = self.params;
        let speech = energy >= floor * p.ratio && energy >= p.min_energy && zcr <= p.max_zcr;
        if !speech && !matches!(self.phase, Phase::Speech { .. }) {
            let adapted = if energy < floor {
                energy
            } else {
                floor + 0.05 * (energy - floor)
            };
            self.noise_floor = Some(adapted.max(1e-10));
        }
        self.phase = match (self.phase, speech) {
            (Phase::Silence, false) => Phase::Silence,
            (Phase::Silence, true) => {
                self.reset_accumulators();
                self.accumulate(energy);
                self.onset(index, 1)
            }
            (Phase::Onset { .. }, false) => {
                self.reset_accumulators();
                Phase::Silence
            }
            (Phase::Onset { start, frames }, true) => {
                self.accumulate(energy);
                self.onset(start, frames + 1)
            }
            (
                Phase::Speech {
                    start,
                    last_speech,
                    quiet,
                },
                false,
            ) => {
                if quiet + 1 >= p.hangover_frames {
                    out.push(self.segment(start, last_speech));
                    self.reset_accumulators();
                    Phase::Silence
                } else {
                    Phase::Speech {
                        start,
                        last_speech,
                        quiet: quiet + 1,
                    }
                }
            }
            (Phase::Speech { start, .. }, true) => {
                self.accumulate(energy);
                Phase::Speech {
                    start,
                    last_speech: index,
                    quiet: 0,
                }
            }
        };
    }

    fn onset(&self, start: u64, frames: u32) -> Phase {
        if frames >= self.params.min_speech_frames {
            Phase::Speech {
                start,
                last_speech: start + u64::from(frames) - 1,
                quiet: 0,
            }
        } else {
            Phase::Onset { start, frames }
        }
    }
}

/// The embedding of an utterance: log band powers, mean-centred, zero-padded to `dim`,
/// L2-normalised (the first unit vector if they are all equal).
pub fn embedding(segment: &Segment, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; dim];
    let logs: Vec<f32> = segment.bands.iter().map(|b| (b + 1e-9).ln()).collect();
    let mean = logs.iter().sum::<f32>() / logs.len() as f32;
    for (o, v) in out.iter_mut().zip(logs.iter()) {
        *o = v - mean;
    }
    crate::actors::vision::frame::normalise(&mut out);
    out
}
