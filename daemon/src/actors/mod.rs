//! The subsystem actors the supervisor hosts, one folder each.

pub mod episodic;
pub mod learning;
pub mod vision;
pub mod voice;
