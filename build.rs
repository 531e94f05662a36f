//! Compiles the `.proto` contract with the pure-Rust `protox`, so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/groove/destination/v1/common.proto",
    "proto/groove/destination/v1/credential.proto",
    "proto/groove/destination/v1/template.proto",
    "proto/groove/destination/v1/destination.proto",
    "proto/groove/destination/v1/delivery.proto",
];

/// The error details the service returns (`google.rpc.BadRequest` in a `google.rpc.Status`), vendored outside
/// the contract: reflection serves them so clients can decode the details.
const GOOGLE_RPC_ROOT: &str = "third_party/googleapis";
const GOOGLE_RPC_FILES: &[&str] = &[
    "third_party/googleapis/google/rpc/status.proto",
    "third_party/googleapis/google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed={GOOGLE_RPC_ROOT}");
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    // `compile_fds` does not write the descriptor set, and server reflection needs it.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("groove_destination_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    std::fs::write(
        out_dir.join("google_rpc_descriptor.bin"),
        protox::compile(GOOGLE_RPC_FILES, [GOOGLE_RPC_ROOT])?.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Groove's answers and Struct records travel as encoded bytes rather than as prost trees: see
        // `src/api/json_wire.rs`.
        .extern_path(".google.protobuf.Value", "crate::api::json_wire::JsonValue")
        .extern_path(
            ".google.protobuf.Struct",
            "crate::api::json_wire::JsonObject",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
