//! Server reflection: the contract, health, and the `google.rpc` error details the service returns, so a
//! reflection client (grpcurl, buf curl) can decode a `google.rpc.BadRequest` in `grpc-status-details-bin`.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServerReflectionV1Alpha,
    ServerReflectionServer as ServerReflectionV1AlphaServer,
};
use tonic_reflection::server::{Builder, Error};

/// Encoded descriptors of `google/rpc/status.proto` and `google/rpc/error_details.proto` (third_party/googleapis).
const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));

fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(GOOGLE_RPC_DESCRIPTOR_SET)
}

pub(super) fn v1() -> Result<ServerReflectionServer<impl ServerReflection>, Error> {
    builder().build_v1()
}

/// grpcurl 1.8 speaks only v1alpha.
pub(super) fn v1alpha() -> Result<ServerReflectionV1AlphaServer<impl ServerReflectionV1Alpha>, Error>
{
    builder().build_v1alpha()
}
