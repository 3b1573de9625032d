//! Generates the remote_write messages from `proto/prometheus/` with prost (no gRPC: these are
//! plain HTTP bodies), using the protoc that protoc-bin-vendored ships.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.compile_protos(
        &[root.join("prometheus/remote.proto"), root.join("prometheus/types.proto")],
        std::slice::from_ref(&root),
    )?;
    println!("cargo:rerun-if-changed={}", root.join("prometheus").display());
    Ok(())
}
