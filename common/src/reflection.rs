//! Server reflection, v1 and v1alpha (grpcurl 1.8 speaks only the latter), listing what
//! a server serves rather than everything in the shared descriptor set, and knowing
//! google.rpc.ErrorInfo / BadRequest so grpcurl can print error details.

use tonic_reflection::server::{
    Builder, Error,
    v1::{ServerReflection as V1, ServerReflectionServer as V1Server},
    v1alpha::{ServerReflection as V1Alpha, ServerReflectionServer as V1AlphaServer},
};

/// The two reflection services for a server serving `services` (its own API names;
/// health and reflection are added here). `descriptor_set` is the API's encoded
/// `FileDescriptorSet`.
///
/// # Errors
/// When the descriptor set cannot be decoded.
pub fn services(
    descriptor_set: &'static [u8],
    services: &[&str],
) -> Result<(V1Server<impl V1>, V1AlphaServer<impl V1Alpha>), Error> {
    let builder = || {
        let mut builder = Builder::configure()
            .register_encoded_file_descriptor_set(descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in services {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
