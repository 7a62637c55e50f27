//! Compiles `proto/brainstem/v1/*.proto` and the flagd evaluation protocol (`proto/flagd/evaluation/
//! v1` and `v2`) with the vendored protoc (no system protoc needed) and writes one descriptor set per
//! package family for server reflection.

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(proto_dir.join("brainstem/v1"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("brainstem_v1_descriptor.bin"))
        .compile_with_config(config, &protos, std::slice::from_ref(&proto_dir))?;

    let flagd: Vec<PathBuf> = ["v1", "v2"]
        .iter()
        .map(|v| proto_dir.join(format!("flagd/evaluation/{v}/evaluation.proto")))
        .collect();
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("flagd_descriptor.bin"))
        .compile_with_config(config, &flagd, std::slice::from_ref(&proto_dir))?;

    println!("cargo:rerun-if-changed=proto/brainstem");
    println!("cargo:rerun-if-changed=proto/flagd");
    Ok(())
}
