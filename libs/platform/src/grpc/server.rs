//! Collects a service's tonic services; [`crate::App`] adds health, reflection and the layers.

use std::convert::Infallible;

use tonic::{body::Body, server::NamedService, service::RoutesBuilder};
use tower::Service;

/// The gRPC services a process serves, plus what reflection needs to describe them.
#[derive(Debug, Default)]
pub struct GrpcServices {
    pub(crate) routes: RoutesBuilder,
    pub(crate) names: Vec<&'static str>,
    pub(crate) descriptor_sets: Vec<&'static [u8]>,
}

impl GrpcServices {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server (e.g. `IdentityServiceServer::new(svc)`). Its name gets its own
    /// grpc.health.v1 status and is listed by reflection.
    #[must_use]
    pub fn serve<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible, Response = http::Response<Body>>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Registers an encoded `FileDescriptorSet` that describes the added services (reflection).
    #[must_use]
    pub fn descriptors(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }
}
