//! `[vision]`: the vision actor's limits and parameters, and its supervision keys.

use crate::config::{Section, Table, Walker};
use crate::supervisor::config::{ActorConfig, OverflowPolicy};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VisionConfig {
    pub enabled: bool,
    /// Largest frame accepted, in pixels (raw frames and decoded PNG/JPEG headers alike).
    pub max_width: u64,
    pub max_height: u64,
    /// Side of the gray grid every frame is area-averaged to before hashing and comparing.
    pub grid_size: u64,
    /// dHash Hamming distance at or below which a frame without motion is a near-duplicate.
    pub dedup_distance: u64,
    /// A grid cell changed when its gray level moved by more than this (0–255).
    pub cell_threshold: u64,
    /// Changed cells, in thousandths of the grid, at or above which a frame is a motion event.
    pub motion_threshold_permille: u64,
    /// Sources whose previous frame is remembered (the least recently used is forgotten beyond it).
    pub max_sources: u64,
    #[serde(flatten)]
    pub actor: ActorConfig,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            enabled: true,
            max_width: 4096,
            max_height: 4096,
            grid_size: 32,
            dedup_distance: 4,
            cell_threshold: 20,
            motion_threshold_permille: 10,
            max_sources: 64,
            actor: perception_actor(),
        }
    }
}

/// Supervision defaults for a perception actor: not critical (the daemon stays ready without its
/// eyes and ears), a short mailbox (messages are frames or audio chunks of up to megabytes, and each
/// stream has at most one in flight), and a second's wait for room before RESOURCE_EXHAUSTED.
pub fn perception_actor() -> ActorConfig {
    ActorConfig {
        critical: false,
        mailbox_capacity: 16,
        mailbox_overflow: OverflowPolicy::Wait,
        mailbox_wait_ms: 1000,
        ..ActorConfig::default()
    }
}

impl Section for VisionConfig {
    const KEY: &'static str = "vision";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.integer(&t, "max_width", 1..=65_535, &mut self.max_width);
        walker.integer(&t, "max_height", 1..=65_535, &mut self.max_height);
        walker.integer(&t, "grid_size", 9..=64, &mut self.grid_size);
        walker.integer(&t, "dedup_distance", 0..=64, &mut self.dedup_distance);
        walker.integer(&t, "cell_threshold", 0..=254, &mut self.cell_threshold);
        walker.integer(
            &t,
            "motion_threshold_permille",
            1..=1000,
            &mut self.motion_threshold_permille,
        );
        walker.integer(&t, "max_sources", 1..=10_000, &mut self.max_sources);
        self.actor.parse_keys(walker, &t);
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[vision]
# Frames submitted over brainstem.v1.Vision/SubmitFrames (gray8, rgb8, png, jpeg); docs/PERCEPTION.md.
enabled = {enabled}
# Largest frame in pixels; a PNG/JPEG header is checked against it before its pixels are allocated.
max_width = {max_width}
max_height = {max_height}
# Each frame is area-averaged to a grid_size x grid_size gray grid. A frame whose 64-bit dHash is
# within dedup_distance bits of the previous kept frame of its source, and that shows no motion, is a
# near-duplicate (dropped). A cell changed when its level moved by more than cell_threshold; a frame
# is a motion event (a `motion` episode) when at least motion_threshold_permille / 1000 of the cells
# changed.
grid_size = {grid}
dedup_distance = {dedup}
cell_threshold = {cell}
motion_threshold_permille = {motion}
# Sources whose previous frame is remembered; the least recently used is forgotten beyond this.
max_sources = {sources}
{actor}"#,
            enabled = self.enabled,
            max_width = self.max_width,
            max_height = self.max_height,
            grid = self.grid_size,
            dedup = self.dedup_distance,
            cell = self.cell_threshold,
            motion = self.motion_threshold_permille,
            sources = self.max_sources,
            actor = self.actor.default_text(),
        )
    }
}
