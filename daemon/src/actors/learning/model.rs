//! The model: logistic regression trained online by SGD, its prequential accuracy window, and the
//! identity of an event (canonical bytes, deduplication key). Pure functions of their inputs: the
//! same events in the same order give bit-identical weights, which is what replay relies on.

use std::collections::VecDeque;

/// Domain separation of the two kinds of deduplication key.
const EVENT_ID_DOMAIN: &[u8] = b"brainstem.learning.event_id.v1\0";
const CONTENT_DOMAIN: &[u8] = b"brainstem.learning.event.v1\0";

/// A SHA-256 deduplication key.
pub type DedupKey = [u8; 32];

/// The canonical bytes of an event without `event_id`: the domain tag, the feature count (u32 LE),
/// each feature as f64 LE bits and the label as f64 LE bits, with -0.0 written as 0.0 (the two are
/// equal as numbers, so they are the same event). NaN and infinities never get here (validated).
pub fn canonical_bytes(features: &[f64], label: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTENT_DOMAIN.len() + 4 + 8 * (features.len() + 1));
    out.extend_from_slice(CONTENT_DOMAIN);
    out.extend_from_slice(&(features.len() as u32).to_le_bytes());
    for value in features.iter().chain(std::iter::once(&label)) {
        let value = if *value == 0.0 { 0.0 } else { *value };
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// The event's deduplication key: SHA-256 of its `event_id` when it has one, else of its canonical
/// bytes. The domain tags keep the two kinds apart.
pub fn dedup_key(features: &[f64], label: f64, event_id: Option<&str>) -> DedupKey {
    let digest = match event_id {
        Some(id) => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(EVENT_ID_DOMAIN);
            ctx.update(id.as_bytes());
            ctx.finish()
        }
        None => ring::digest::digest(&ring::digest::SHA256, &canonical_bytes(features, label)),
    };
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Rolling prequential accuracy: for each event, whether the model's class (score ≥ 0.5) matched
/// the label's (label ≥ 0.5) before the model learned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    capacity: usize,
    outcomes: VecDeque<bool>,
    correct: usize,
}

impl Window {
    pub fn new(capacity: usize) -> Window {
        Window {
            capacity: capacity.max(1),
            outcomes: VecDeque::new(),
            correct: 0,
        }
    }

    pub fn push(&mut self, correct: bool) {
        if self.outcomes.len() == self.capacity
            && let Some(old) = self.outcomes.pop_front()
        {
            self.correct -= usize::from(old);
        }
        self.outcomes.push_back(correct);
        self.correct += usize::from(correct);
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    pub fn accuracy(&self) -> Option<f64> {
        (!self.outcomes.is_empty()).then(|| self.correct as f64 / self.outcomes.len() as f64)
    }

    /// The outcomes, oldest first, one bit each (LSB first), for the checkpoint.
    pub fn to_bits(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.outcomes.len().div_ceil(8)];
        for (i, correct) in self.outcomes.iter().enumerate() {
            if *correct {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        bits
    }

    /// The window from [`Window::to_bits`] (`len` outcomes); a smaller capacity keeps the newest.
    pub fn from_bits(capacity: usize, bits: &[u8], len: usize) -> Window {
        let mut window = Window::new(capacity);
        for i in 0..len.min(bits.len() * 8) {
            window.push(bits[i / 8] & (1 << (i % 8)) != 0);
        }
        window
    }
}

/// Logistic regression, `P(y = 1 | x) = sigmoid(w · x + b)`, with one SGD step on the log loss per
/// event: `w ← w − η (p − y) x`, `b ← b − η (p − y)`. Weights start at zero; until the dimension is
/// known (the first event, when it is not configured) `weights` is empty and every score is 0.5.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub weights: Vec<f64>,
    pub bias: f64,
    /// The sequence number of the last event learned (0: none).
    pub learned_seq: u64,
    pub events_learned: u64,
    pub window: Window,
}

impl Model {
    pub fn new(dimension: usize, window: usize) -> Model {
        Model {
            weights: vec![0.0; dimension],
            bias: 0.0,
            learned_seq: 0,
            events_learned: 0,
            window: Window::new(window),
        }
    }

    /// P(class 1). `features` has the model's dimension (validated by the caller); a model without a
    /// dimension yet scores everything 0.5.
    pub fn predict(&self, features: &[f64]) -> f64 {
        let z: f64 = self
            .weights
            .iter()
            .zip(features)
            .map(|(w, x)| w * x)
            .sum::<f64>()
            + self.bias;
        sigmoid(z)
    }

    /// Predicts (for the prequential window), then takes one SGD step.
    pub fn learn(&mut self, seq: u64, features: &[f64], label: f64, rate: f64) {
        if self.weights.is_empty() {
            self.weights = vec![0.0; features.len()];
        }
        let p = self.predict(features);
        self.window.push((p >= 0.5) == (label >= 0.5));
        let g = p - label;
        for (w, x) in self.weights.iter_mut().zip(features) {
            *w -= rate * g * x;
        }
        self.bias -= rate * g;
        self.learned_seq = seq;
        self.events_learned += 1;
    }

    /// The weights as bytes (each weight then the bias as f64 LE): the checkpoint's payload and what a
    /// model registry would publish, with its SHA-256 as the version's content hash.
    pub fn weight_bytes(&self) -> Vec<u8> {
        self.weights
            .iter()
            .chain(std::iter::once(&self.bias))
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// Weights and bias from [`Model::weight_bytes`].
    pub fn weights_from_bytes(bytes: &[u8]) -> Result<(Vec<f64>, f64), String> {
        let mut values = f64s_le(bytes)
            .ok_or_else(|| format!("{} bytes is not a whole number of f64s", bytes.len()))?;
        let bias = values
            .pop()
            .ok_or_else(|| "no weights: not even a bias".to_owned())?;
        Ok((values, bias))
    }
}

/// What a model registry would publish for one model version (see docs/LEARNING.md): the weights,
/// their SHA-256, and the quality metrics at that point.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub weights: Vec<u8>,
    pub sha256_hex: String,
    pub dimension: usize,
    pub learned_seq: u64,
    pub events_learned: u64,
    pub accuracy: Option<f64>,
    pub accuracy_window: usize,
}

impl Snapshot {
    pub fn of(model: &Model) -> Snapshot {
        let weights = model.weight_bytes();
        let sha256_hex = hex(ring::digest::digest(&ring::digest::SHA256, &weights).as_ref());
        Snapshot {
            weights,
            sha256_hex,
            dimension: model.weights.len(),
            learned_seq: model.learned_seq,
            events_learned: model.events_learned,
            accuracy: model.window.accuracy(),
            accuracy_window: model.window.len(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Little-endian f64s, as the store keeps weights and features; `None` unless a whole number of
/// them.
pub(crate) fn f64s_le(bytes: &[u8]) -> Option<Vec<f64>> {
    (bytes.len() % 8 == 0).then(|| {
        bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()
    })
}
