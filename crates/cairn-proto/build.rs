//! Generates the cairn.v1 messages and services with tonic-prost-build, using the protoc that
//! protoc-bin-vendored ships, so a fresh machine needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = ["types", "ingest", "review", "audit", "guardrails", "incidents"]
        .iter()
        .map(|f| root.join(format!("cairn/v1/{f}.proto")))
        .collect();
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cairn_descriptor.bin"))
        .compile_with_config(config, &files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.join("cairn").display());
    Ok(())
}
