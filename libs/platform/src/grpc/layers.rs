//! The tower layers of the one gRPC server stack. Each is small and does one thing; the order they
//! are stacked in is decided (and explained) in [`super::server`].

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::sync::Semaphore;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::{
    error::{ErrorCode, ServiceError},
    telemetry,
};

/// The request id header, created when absent and echoed on the response.
pub const REQUEST_ID: &str = "x-request-id";

/// Metadata a client may never set: it is only ever written by our own layers (the servers strip
/// it from every call; the gateway never forwards it).
pub const INTERNAL_METADATA: [&str; 4] = ["x-user-id", "x-principal", "x-roles", "x-internal-auth"];

/// Metadata that reports the end client (its address, its user agent). Believed only from a peer in
/// `server.trusted_forwarders` (the gateway); from anyone else it is removed before a handler
/// reads it, so a caller that reaches a service port directly cannot choose the address a session,
/// an audit entry or a per-IP decision records.
pub const FORWARDED_METADATA: [&str; 3] = ["x-forwarded-for", "x-forwarded-user-agent", "forwarded"];

/// Paths that answer without authentication and are not counted as API traffic.
fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

// ---------------------------------------------------------------------------------------------
// Request context: request id, trace context, span, access log, metrics.
// ---------------------------------------------------------------------------------------------

/// Gives every call a request id and a span joined to the caller's trace, logs its outcome and
/// records `grpc_server_requests_total` and `grpc_server_request_duration_seconds`.
#[derive(Debug, Clone)]
pub struct RequestContextLayer {
    service: &'static str,
}

impl RequestContextLayer {
    /// Layer for the service named `service` (the process, e.g. `identity`).
    #[must_use]
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContext { inner, service: self.service }
    }
}

/// See [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContext<S> {
    inner: S,
    service: &'static str,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestContext<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<RecordedBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            req.headers_mut().insert(REQUEST_ID, value);
        }

        let span = tracing::info_span!(
            "rpc",
            rpc.method = %path,
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
            otel.name = %path,
        );
        let trace_id = telemetry::adopt_remote_parent(&span, telemetry::extract_context(req.headers()));
        span.record("trace_id", trace_id.as_str());

        let recorder = CallRecorder {
            service: self.service,
            method: path,
            start: Instant::now(),
            code: None,
            span: span.clone(),
            quiet: false,
        };
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut recorder = recorder;
                recorder.quiet = is_infrastructure(&recorder.method);
                let mut res = fut.await?;
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    res.headers_mut().insert(REQUEST_ID, value);
                }
                // Trailers-only responses (errors) carry grpc-status in the headers.
                if let Some(code) = grpc_status(res.headers()) {
                    recorder.code = Some(code);
                }
                Ok(res.map(|body| RecordedBody { inner: body, recorder: Some(recorder) }))
            }
            .instrument(span),
        )
    }
}

fn valid_request_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Records the outcome of one call when the response finishes (or is dropped: `CANCELLED`).
struct CallRecorder {
    service: &'static str,
    method: String,
    start: Instant,
    code: Option<Code>,
    span: tracing::Span,
    quiet: bool,
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.start.elapsed();
        let labels = [
            ("service", self.service.to_owned()),
            ("method", self.method.clone()),
            ("code", format!("{code:?}")),
        ];
        metrics::counter!("grpc_server_requests_total", &labels).increment(1);
        metrics::histogram!("grpc_server_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
        if !self.quiet {
            let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            self.span.in_scope(|| {
                tracing::info!(grpc.code = ?code, elapsed_ms = millis, "rpc finished");
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the final `grpc-status` to its [`CallRecorder`].
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        recorder: Option<CallRecorder>,
    }
}

impl<B> std::fmt::Debug for RecordedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(recorder) = this.recorder.as_mut()
                {
                    recorder.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.code.get_or_insert(Code::Internal);
                }
                this.recorder.take();
            }
            Poll::Ready(None) => {
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.code.get_or_insert(Code::Ok);
                }
                this.recorder.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Load shedding
// ---------------------------------------------------------------------------------------------

/// Answers `RESOURCE_EXHAUSTED` at once when `limit` calls are already in flight, instead of
/// queueing without bound.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
}

impl LoadShedLayer {
    /// At most `limit` concurrent calls.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit)) }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, permits: self.permits.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for LoadShed<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let infrastructure = is_infrastructure(req.uri().path());
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Health checks are never shed: an overloaded pod is still alive.
            Err(_) if infrastructure => None,
            Err(_) => {
                metrics::counter!("grpc_server_shed_total").increment(1);
                let status: tonic::Status =
                    ServiceError::new(ErrorCode::ResourceExhausted, "server is at capacity, retry shortly")
                        .into();
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(permit);
            res
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication slot
// ---------------------------------------------------------------------------------------------

/// Authenticates a call from its headers. Implemented by `bank-auth`; the platform only provides
/// the slot so that every service runs the very same check.
pub trait Authenticate: Send + Sync + 'static {
    /// Inspects `parts` (headers, URI). On success it may insert extensions (the principal) and
    /// returns `Ok`; a call without credentials is passed on unauthenticated (the RPC decides);
    /// bad credentials return the status to answer with.
    fn authenticate<'a>(
        &'a self,
        parts: &'a mut http::request::Parts,
    ) -> BoxFuture<'a, Result<(), tonic::Status>>;
}

/// Strips client-sent internal metadata and runs the [`Authenticate`] implementation, if any.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Option<Arc<dyn Authenticate>>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").field("enabled", &self.authenticator.is_some()).finish()
    }
}

impl AuthLayer {
    /// A layer with an optional authenticator.
    #[must_use]
    pub fn new(authenticator: Option<Arc<dyn Authenticate>>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, authenticator: self.authenticator.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Option<Arc<dyn Authenticate>>,
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Auth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service that was polled ready is the one we must call; keep a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            for name in INTERNAL_METADATA {
                parts.headers.remove(name);
            }
            if let Some(authenticator) = authenticator
                && !is_infrastructure(parts.uri.path())
                && let Err(status) = authenticator.authenticate(&mut parts).await
            {
                return Ok(status.into_http());
            }
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarded client facts: believed only from trusted forwarders.
// ---------------------------------------------------------------------------------------------

/// Removes [`FORWARDED_METADATA`] from calls whose TCP peer is not a trusted forwarder.
#[derive(Debug, Clone)]
pub struct ForwardedLayer {
    trusted: Arc<crate::net::AddressBlocks>,
}

impl ForwardedLayer {
    /// Believes forwarded metadata from peers in `trusted` only (empty: from nobody).
    #[must_use]
    pub fn new(trusted: crate::net::AddressBlocks) -> Self {
        Self { trusted: Arc::new(trusted) }
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Forwarded { inner, trusted: self.trusted.clone() }
    }
}

/// See [`ForwardedLayer`].
#[derive(Debug, Clone)]
pub struct Forwarded<S> {
    inner: S,
    trusted: Arc<crate::net::AddressBlocks>,
}

impl<S, ReqB> Service<Request<ReqB>> for Forwarded<S>
where
    S: Service<Request<ReqB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr);
        let believed = peer.is_some_and(|peer| self.trusted.contains(peer.ip()));
        if !believed {
            let headers = req.headers_mut();
            for name in FORWARDED_METADATA {
                headers.remove(name);
            }
        }
        self.inner.call(req)
    }
}
