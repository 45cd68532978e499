//! Compiles the broker's proto (client side only) with a vendored `protoc`.
//!
//! `proto/` is a symlink to the repository's `proto/` (the one source of
//! truth), so `cargo package` copies the file into the published crate and
//! the crate builds on its own, e.g. on docs.rs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_protos(&["proto/turnstile/v1/broker.proto"], &["proto"])?;
    Ok(())
}
