//! Compiles `proto/` with a vendored `protoc`, so a fresh machine needs no
//! manual install step.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/turnstile/v1/broker.proto"], &["proto"])?;
    Ok(())
}
