//! Compiles `proto/` with a vendored `protoc`, so a fresh machine needs no
//! manual install step, and generates from the same descriptors what the
//! HTTP/JSON API needs: canonical proto3 JSON (pbjson), the method table
//! and the OpenAPI document ([`http_api`]).

#[path = "build/http_api.rs"]
mod http_api;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("turnstile_descriptors.bin");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&["proto/turnstile/v1/broker.proto"], &["proto"])?;
    let bytes = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .build(&[".turnstile.v1"])?;
    http_api::generate(&bytes, &out)?;
    Ok(())
}
