//! Compiles `gantry/inference/v1/inference.proto` with `protoc` (Debian's
//! `protobuf-compiler`; set `PROTOC` to use another one).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "gantry/inference/v1/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["."])?;
    Ok(())
}
