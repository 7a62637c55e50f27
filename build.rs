//! Compiles `proto/brainstem/v1/*.proto` with the vendored protoc (no system protoc needed) and writes the
//! descriptor set that server reflection serves.

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

    println!("cargo:rerun-if-changed=proto/brainstem");
    Ok(())
}
