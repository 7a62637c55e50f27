//! End-to-end tests: one test binary, a harness that runs the real binaries (process-level tests) or
//! the daemon library in-process, always on 127.0.0.1 port 0 with a temp state dir and its own dev PKI.

mod access;
mod audit;
mod backup;
mod flags;
mod hardening;
mod harness;
mod inprocess;
mod inputs;
mod integrity;
mod learning;
mod operations;
mod perception;
mod process;
mod registry;
mod secrets;
mod stress;
mod supervision;
mod tokens;
mod traces;
