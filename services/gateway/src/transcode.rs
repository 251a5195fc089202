//! REST <-> gRPC transcoding shared by every generated handler.
//!
//! A request becomes one JSON object — the body (or the body field), then the path variables, then
//! the query parameters converted to the JSON type their field needs — which the request message's
//! pbjson `Deserialize` turns into the prost type (unknown fields refused). The upstream call carries
//! the forwarded headers as metadata and the configured deadline; the answer is the response
//! message as canonical proto3 JSON, or the status as problem+json.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{FromRequestParts as _, Path, Request},
    response::{IntoResponse as _, Response},
};
use bank_platform::{ErrorCode, telemetry};
use http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::{
    breaker::Admission,
    client_ip::ClientIp,
    context::{REQUEST_ID, RequestId},
    problem::{Problem, Violation},
};

pub(crate) use crate::{upstream::Upstream, upstreams::Upstreams};

/// The default largest request body (`edge.max_body_bytes`; larger ones answer 413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request the gateway refuses before calling anyone (boxed: a `Problem` is large).
type Refusal = Box<Problem>;

/// How much longer than the deadline the gateway waits for an upstream's own DEADLINE_EXCEEDED.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// One generated route, as tests and tools see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// The axum path, equal to the annotation's template: `/api/v1/accounts/{account_id}`.
    pub path: &'static str,
    /// `bank.identity.v1.IdentityService/Register`.
    pub rpc: &'static str,
    /// Needs no token.
    pub public: bool,
}

/// How a route assembles its request message.
#[derive(Debug)]
pub(crate) struct RouteSpec {
    /// The gRPC path, for logs.
    pub(crate) rpc: &'static str,
    /// Which upstream serves it (its circuit breaker).
    pub(crate) upstream: Upstream,
    /// A read (GET): retried on UNAVAILABLE. Writes never are.
    pub(crate) idempotent: bool,
    pub(crate) body: BodySpec,
    pub(crate) path_params: &'static [PathParam],
    pub(crate) query: &'static [QueryParam],
    /// The JSON name of the request's `google.protobuf.FieldMask update_mask` (body `*` only):
    /// without one in the body, the body's own keys become the mask (see [`update_mask`]).
    pub(crate) update_mask: Option<&'static str>,
}

/// Where the body goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodySpec {
    /// No body (it is ignored).
    None,
    /// The body is the request message.
    All,
    /// The body is this field (its JSON name).
    #[allow(dead_code, reason = "supported by the generator; no contract uses `body: \"<field>\"` yet")]
    Field(&'static str),
}

/// A path variable: a top-level string field.
#[derive(Debug)]
pub(crate) struct PathParam {
    pub(crate) proto: &'static str,
    pub(crate) json: &'static str,
}

/// A query parameter: a (possibly nested) field.
#[derive(Debug)]
pub(crate) struct QueryParam {
    /// `page.page_size`.
    pub(crate) proto: &'static str,
    /// `page.pageSize` (the documented spelling).
    pub(crate) json: &'static str,
    /// `["page", "pageSize"]`.
    pub(crate) path: &'static [&'static str],
    pub(crate) kind: Kind,
    pub(crate) repeated: bool,
}

/// The JSON type a query string becomes.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code, reason = "every type the generator supports; not every one is in a query today")]
pub(crate) enum Kind {
    /// Strings, bytes (base64), timestamps, durations, field masks: as given.
    String,
    Bool,
    Int32,
    Uint32,
    /// Canonical proto3 JSON: a string of digits.
    Int64,
    Uint64,
    Float,
    /// A value name (or number).
    Enum,
}

/// Transcodes one unary call: request JSON -> `Req` -> `call` -> `respond` (or problem+json).
/// Reads that fail with UNAVAILABLE are retried (backoff with full jitter, within the deadline);
/// an open circuit answers 503 at once.
pub(crate) async fn unary<Req, Resp, Call, Fut>(
    spec: &'static RouteSpec,
    upstreams: &Upstreams,
    request: Request,
    call: Call,
    respond: fn(Resp) -> Response,
) -> Response
where
    Req: DeserializeOwned + Clone,
    Call: Fn(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let (mut parts, body) = request.into_parts();
    let message = match decode::<Req>(spec, upstreams, &mut parts, body).await {
        Ok(message) => message,
        Err(problem) => return (*problem).into_response(),
    };
    let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.as_str());
    let client_ip = parts.extensions.get::<ClientIp>().map(|ip| ip.0);
    let breaker = upstreams.breaker(spec.upstream);
    let timeout =
        upstreams.route_timeouts.get(spec.rpc.trim_start_matches('/')).copied().unwrap_or(upstreams.timeout);
    let deadline = Instant::now() + timeout;
    let attempts = if spec.idempotent { 1 + upstreams.retries } else { 1 };
    let mut message = Some(message);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Admission::Refused(wait) = breaker.admit() {
            let mut problem = Problem::new(ErrorCode::Unavailable, "the service is unavailable; retry later");
            problem.retry_after = Some(wait.as_secs().max(1));
            return problem.into_response();
        }
        let last = attempt >= attempts;
        let Some(body) = (if last { message.take() } else { message.clone() }) else {
            breaker.abandoned();
            return Problem::new(ErrorCode::Internal, "internal error").into_response();
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut grpc = tonic::Request::new(body);
        forward_metadata(&parts.headers, request_id, client_ip, grpc.metadata_mut());
        grpc.set_timeout(remaining);
        let outcome = tokio::time::timeout(remaining + DEADLINE_GRACE, call(grpc)).await;
        match outcome {
            Ok(Ok(response)) => {
                breaker.success();
                // A replayed idempotent answer says so to the client as well.
                let replayed = response.metadata().contains_key(bank_platform::idempotency::REPLAYED);
                let mut answer = respond(response.into_inner());
                if replayed {
                    answer.headers_mut().insert(
                        http::HeaderName::from_static(bank_platform::idempotency::REPLAYED),
                        http::HeaderValue::from_static("true"),
                    );
                }
                return answer;
            }
            // The client's transport gave up (a connect or request timeout): the upstream did not
            // answer. Past our deadline that is 504; before it, the upstream is unavailable.
            Ok(Err(status)) if status.code() == tonic::Code::Cancelled && Instant::now() >= deadline => {
                breaker.failure();
                return deadline_passed(spec, timeout);
            }
            Ok(Err(status)) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Cancelled) => {
                let status = if status.code() == tonic::Code::Cancelled {
                    tracing::warn!(
                        rpc = spec.rpc,
                        message = status.message(),
                        "upstream call cancelled by the transport"
                    );
                    tonic::Status::unavailable("the upstream did not answer")
                } else {
                    status
                };
                breaker.failure();
                let backoff = jittered(upstreams.retry_backoff, attempt);
                if !last && Instant::now() + backoff < deadline {
                    metrics::counter!("gateway_upstream_retries_total", "upstream" => spec.upstream.name())
                        .increment(1);
                    tracing::info!(rpc = spec.rpc, attempt, backoff = ?backoff, "upstream unavailable: retrying a read");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                return Problem::from_status(spec.rpc, &status).into_response();
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::DeadlineExceeded {
                    breaker.failure();
                } else {
                    breaker.success();
                }
                return Problem::from_status(spec.rpc, &status).into_response();
            }
            Err(_) => {
                breaker.failure();
                return deadline_passed(spec, timeout);
            }
        }
    }
}

/// 504: no outcome before the deadline (logged with the RPC and its deadline).
fn deadline_passed(spec: &RouteSpec, timeout: Duration) -> Response {
    tracing::warn!(rpc = spec.rpc, timeout = ?timeout, "upstream deadline passed");
    Problem::new(ErrorCode::DeadlineExceeded, "the deadline passed before the outcome was known")
        .into_response()
}

/// Full jitter: a uniform wait in `[0, base * 2^(attempt-1)]`.
fn jittered(base: Duration, attempt: u32) -> Duration {
    use rand::Rng as _;
    let cap = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::thread_rng().gen_range(0..=cap_us))
}

/// Builds the request message from body, path and query.
async fn decode<Req: DeserializeOwned>(
    spec: &RouteSpec,
    upstreams: &Upstreams,
    parts: &mut Parts,
    body: Body,
) -> Result<Req, Refusal> {
    let limits = (upstreams.max_body_bytes, upstreams.max_json_depth);
    let mut object = match spec.body {
        BodySpec::None => Map::new(),
        BodySpec::All => match read_json(&parts.headers, body, limits).await? {
            None => Map::new(),
            Some(Value::Object(object)) => object,
            Some(_) => {
                return Err(Problem::invalid(vec![Violation::new(
                    "",
                    "INVALID_VALUE",
                    "the body must be a JSON object",
                )])
                .into());
            }
        },
        BodySpec::Field(name) => {
            let mut object = Map::new();
            if let Some(value) = read_json(&parts.headers, body, limits).await? {
                object.insert(name.to_owned(), value);
            }
            object
        }
    };

    if let Some(mask) = spec.update_mask {
        update_mask(mask, &mut object)?;
    }

    if !spec.path_params.is_empty() {
        let Path(values) = Path::<Vec<(String, String)>>::from_request_parts(parts, &())
            .await
            .map_err(|e| Problem::invalid(vec![Violation::new("path", "INVALID_VALUE", e.body_text())]))?;
        for param in spec.path_params {
            if object.contains_key(param.json) || object.contains_key(param.proto) {
                return Err(Problem::invalid(vec![Violation::new(
                    param.json,
                    "SET_BY_PATH",
                    format!("`{}` is given by the URL path; leave it out of the body", param.json),
                )])
                .into());
            }
            let value = values
                .iter()
                .find(|(name, _)| name == param.proto)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            object.insert(param.json.to_owned(), Value::String(value));
        }
    }

    if let Some(query) = parts.uri.query() {
        apply_query(spec, query, &mut object)?;
    }

    Ok(serde_path_to_error::deserialize::<_, Req>(Value::Object(object)).map_err(json_problem)?)
}

/// An update changes what its body names (AIP-134): `updateMask` given in its canonical JSON form
/// (`"description,enabled"`, camelCase or snake_case names) becomes the message's paths; without
/// one, the body's keys are the mask, so `{"enabled": false}` disables and a field left out keeps
/// its value.
fn update_mask(json_name: &str, object: &mut Map<String, Value>) -> Result<(), Refusal> {
    let given = object.remove(json_name).or_else(|| object.remove("update_mask"));
    let paths: Vec<Value> = match given {
        None => object.keys().map(|key| Value::String(snake_case(key))).collect(),
        Some(Value::String(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(|path| Value::String(path.split('.').map(snake_case).collect::<Vec<_>>().join(".")))
            .collect(),
        Some(Value::Object(mask)) => {
            object.insert(json_name.to_owned(), Value::Object(mask));
            return Ok(());
        }
        Some(_) => {
            return Err(Problem::invalid(vec![Violation::new(
                json_name,
                "INVALID_VALUE",
                "a comma-separated list of field names",
            )])
            .into());
        }
    };
    let mut mask = Map::new();
    mask.insert("paths".to_owned(), Value::Array(paths));
    object.insert(json_name.to_owned(), Value::Object(mask));
    Ok(())
}

/// `eventTypes` -> `event_types` (a proto field name is already snake_case and stays so).
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the body as JSON: `None` when it is empty. Anything but `application/json` is refused
/// with 415, oversized bodies with 413, nesting deeper than the limit with 400.
async fn read_json(
    headers: &HeaderMap,
    body: Body,
    (max_bytes, max_depth): (usize, usize),
) -> Result<Option<Value>, Refusal> {
    let bytes = axum::body::to_bytes(body, max_bytes).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(<dyn std::error::Error>::is::<http_body_util::LengthLimitError>);
        if too_large {
            Problem::new(ErrorCode::PayloadTooLarge, format!("the body is larger than {max_bytes} bytes"))
        } else {
            Problem::new(ErrorCode::ValidationFailed, "the body could not be read")
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !is_json(headers) {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as application/json (canonical proto3 JSON)",
        )
        .into());
    }
    if json_depth(&bytes) > max_depth {
        return Err(Problem::invalid(vec![Violation::new(
            "",
            "TOO_DEEP",
            format!("the body nests deeper than {max_depth} levels"),
        )])
        .into());
    }
    Ok(serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Problem::new(ErrorCode::ValidationFailed, format!("the body is not valid JSON: {e}")))?)
}

/// The deepest nesting of arrays and objects in `bytes` (strings skipped), without parsing.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                (false, _) => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `application/json`, with any parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Adds the query parameters to `object`, converted to the JSON types their fields need.
fn apply_query(spec: &RouteSpec, query: &str, object: &mut Map<String, Value>) -> Result<(), Refusal> {
    let mut violations = Vec::new();
    for (name, text) in form_urlencoded::parse(query.as_bytes()) {
        let Some(param) = spec.query.iter().find(|p| p.json == name || p.proto == name) else {
            violations.push(Violation::new(
                name.as_ref(),
                "UNKNOWN_FIELD",
                format!("unknown query parameter `{name}`"),
            ));
            continue;
        };
        let value = match convert(param.kind, &text) {
            Ok(value) => value,
            Err(expected) => {
                violations.push(Violation::new(
                    param.json,
                    "INVALID_VALUE",
                    format!("`{}` must be {expected}", param.json),
                ));
                continue;
            }
        };
        if let Err(problem) = insert(object, param, value) {
            violations.push(Violation::new(param.json, problem.0, problem.1));
        }
    }
    if violations.is_empty() { Ok(()) } else { Err(Problem::invalid(violations).into()) }
}

/// Puts `value` at `param.path`, creating the objects on the way; appends for repeated fields.
fn insert(
    object: &mut Map<String, Value>,
    param: &QueryParam,
    value: Value,
) -> Result<(), (&'static str, String)> {
    let Some((leaf, parents)) = param.path.split_last() else {
        return Err(("INVALID_VALUE", "empty parameter path".to_owned()));
    };
    let mut current = object;
    for parent in parents {
        let slot = current.entry((*parent).to_owned()).or_insert_with(|| Value::Object(Map::new()));
        current = match slot {
            Value::Object(map) => map,
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => {
                return Err(("INVALID_VALUE", format!("`{}` conflicts with another parameter", param.json)));
            }
        };
    }
    match current.get_mut(*leaf) {
        None if param.repeated => {
            current.insert((*leaf).to_owned(), Value::Array(vec![value]));
        }
        None => {
            current.insert((*leaf).to_owned(), value);
        }
        Some(Value::Array(items)) if param.repeated => items.push(value),
        Some(_) => return Err(("DUPLICATE", format!("`{}` may be given once", param.json))),
    }
    Ok(())
}

/// Converts one query string; `Err` says what was expected.
fn convert(kind: Kind, text: &str) -> Result<Value, &'static str> {
    Ok(match kind {
        Kind::String => Value::String(text.to_owned()),
        Kind::Enum => text.parse::<i32>().map_or_else(|_| Value::String(text.to_owned()), Value::from),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err("true or false"),
        },
        Kind::Int32 => Value::from(text.parse::<i32>().map_err(|_| "a 32-bit integer")?),
        Kind::Uint32 => Value::from(text.parse::<u32>().map_err(|_| "an unsigned 32-bit integer")?),
        Kind::Int64 => {
            text.parse::<i64>().map_err(|_| "a 64-bit integer")?;
            Value::String(text.to_owned())
        }
        Kind::Uint64 => {
            text.parse::<u64>().map_err(|_| "an unsigned 64-bit integer")?;
            Value::String(text.to_owned())
        }
        Kind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_owned()),
            _ => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or("a number")?,
        },
    })
}

/// A pbjson deserialisation error as a 400 naming the field.
fn json_problem(err: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = err.path().to_string();
    let message = err.into_inner().to_string();
    // The path usually ends with the offending key already (serde_path_to_error tracks keys).
    let within = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
        let field = within(name);
        let mut problem = Problem::invalid(vec![Violation::new(
            field.clone(),
            "UNKNOWN_FIELD",
            format!("unknown field `{field}`"),
        )]);
        problem.detail = format!("unknown field `{field}`");
        return problem;
    }
    if let Some(name) = message.strip_prefix("duplicate field `").and_then(|rest| rest.split('`').next()) {
        let field = within(name);
        return Problem::invalid(vec![Violation::new(
            field.clone(),
            "DUPLICATE",
            format!("`{field}` is given more than once (or with another member of its oneof)"),
        )]);
    }
    let field = if path == "." { String::new() } else { path };
    let description = if field.is_empty() { message } else { format!("`{field}`: {message}") };
    Problem::invalid(vec![Violation::new(field, "INVALID_VALUE", description)])
}

/// Copies what the upstream may see: the credentials, the idempotency key, the request id and
/// the trace context. Nothing else crosses, so client-sent internal metadata cannot.
fn forward_metadata(
    headers: &HeaderMap,
    request_id: Option<&str>,
    client_ip: Option<std::net::IpAddr>,
    metadata: &mut MetadataMap,
) {
    for name in [header::AUTHORIZATION.as_str(), "idempotency-key"] {
        if let Some(value) = headers.get(name).and_then(|v| AsciiMetadataValue::try_from(v.as_bytes()).ok()) {
            metadata.insert(name, value);
        }
    }
    if let Some(value) = request_id.and_then(|id| AsciiMetadataValue::try_from(id).ok()) {
        metadata.insert(REQUEST_ID, value);
    }
    // The client's address as the gateway resolved it (socket, or trusted proxies' header); the
    // client's own X-Forwarded-For never crosses.
    if let Some(value) = client_ip.and_then(|ip| AsciiMetadataValue::try_from(ip.to_string()).ok()) {
        metadata.insert("x-forwarded-for", value);
    }
    // The end user's agent (services record it on sessions and audit entries); the gateway's own
    // `user-agent` is tonic's.
    if let Some(value) =
        headers.get(header::USER_AGENT).and_then(|v| AsciiMetadataValue::try_from(v.as_bytes()).ok())
    {
        metadata.insert("x-forwarded-user-agent", value);
    }
    // Our span continues the caller's trace; without an OpenTelemetry layer (tests) the caller's
    // context is passed on as it came.
    telemetry::inject_current(metadata);
    if !metadata.contains_key("traceparent") {
        for name in ["traceparent", "tracestate"] {
            if let Some(value) =
                headers.get(name).and_then(|v| AsciiMetadataValue::try_from(v.as_bytes()).ok())
            {
                metadata.insert(name, value);
            }
        }
    }
    for name in bank_platform::grpc::INTERNAL_METADATA {
        metadata.remove(name);
    }
}

/// 200 with the message as canonical proto3 JSON.
pub(crate) fn json_response<T: Serialize>(message: T) -> Response {
    match serde_json::to_vec(&message) {
        Ok(body) => json_bytes(StatusCode::OK, body, "no-store"),
        Err(err) => {
            tracing::error!(error = %err, "cannot render the response as JSON");
            Problem::new(ErrorCode::Internal, "internal error").into_response()
        }
    }
}

/// 200 with the message as canonical proto3 JSON, after `fix` (generated: Z-normalizes its
/// timestamps) has rewritten the rendered value.
pub(crate) fn json_response_with<T: Serialize>(message: T, fix: fn(&mut Value)) -> Response {
    match serde_json::to_value(&message).and_then(|mut value| {
        fix(&mut value);
        serde_json::to_vec(&value)
    }) {
        Ok(body) => json_bytes(StatusCode::OK, body, "no-store"),
        Err(err) => {
            tracing::error!(error = %err, "cannot render the response as JSON");
            Problem::new(ErrorCode::Internal, "internal error").into_response()
        }
    }
}

/// `2026-01-02T03:04:05.123+00:00` -> `2026-01-02T03:04:05.123Z` (pbjson-types renders UTC with
/// an offset; canonical proto3 JSON is Z-normalized).
pub(crate) fn z_normalize(value: &mut Value) {
    if let Value::String(text) = value
        && let Some(utc) = text.strip_suffix("+00:00")
    {
        *text = format!("{utc}Z");
    }
}

/// Applies `fix` to every item of a rendered repeated field.
pub(crate) fn each_item(value: &mut Value, fix: fn(&mut Value)) {
    if let Value::Array(items) = value {
        items.iter_mut().for_each(fix);
    }
}

/// Applies `fix` to every value of a rendered map field.
#[allow(dead_code, reason = "generated code uses it once a map of timestamps is answered")]
pub(crate) fn each_value(value: &mut Value, fix: fn(&mut Value)) {
    if let Value::Object(entries) = value {
        entries.values_mut().for_each(fix);
    }
}

/// A JSON answer.
pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>, cache_control: &'static str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}

/// 200 with the raw bytes of a `google.api.HttpBody` (its content type), and a download name.
pub(crate) fn http_body_response(
    body: Option<bank_proto::google::api::HttpBody>,
    filename: Option<String>,
) -> Response {
    let body = body.unwrap_or_default();
    let content_type = HeaderValue::from_str(&body.content_type)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (StatusCode::OK, body.data).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(name) = filename.filter(|n| !n.is_empty()) {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: RouteSpec = RouteSpec {
        rpc: "/t.T/M",
        upstream: Upstream::Identity,
        idempotent: true,
        body: BodySpec::None,
        path_params: &[],
        query: &[
            QueryParam {
                proto: "page.page_size",
                json: "page.pageSize",
                path: &["page", "pageSize"],
                kind: Kind::Int32,
                repeated: false,
            },
            QueryParam {
                proto: "event_types",
                json: "eventTypes",
                path: &["eventTypes"],
                kind: Kind::String,
                repeated: true,
            },
            QueryParam {
                proto: "min_amount",
                json: "minAmount",
                path: &["minAmount"],
                kind: Kind::Int64,
                repeated: false,
            },
            QueryParam {
                proto: "active",
                json: "active",
                path: &["active"],
                kind: Kind::Bool,
                repeated: false,
            },
            QueryParam {
                proto: "status",
                json: "status",
                path: &["status"],
                kind: Kind::Enum,
                repeated: false,
            },
        ],
        update_mask: None,
    };

    #[test]
    fn an_update_without_a_mask_is_masked_by_its_body_keys() {
        let mut body: Map<String, Value> =
            serde_json::from_str(r#"{"description":"x","eventTypes":[],"enabled":false}"#).unwrap();
        update_mask("updateMask", &mut body).unwrap();
        let mut paths: Vec<&str> =
            body["updateMask"]["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["description", "enabled", "event_types"]);

        let mut given: Map<String, Value> =
            serde_json::from_str(r#"{"description":"x","updateMask":"eventTypes, enabled"}"#).unwrap();
        update_mask("updateMask", &mut given).unwrap();
        assert_eq!(given["updateMask"], serde_json::json!({"paths": ["event_types", "enabled"]}));

        let mut empty = Map::new();
        update_mask("updateMask", &mut empty).unwrap();
        assert_eq!(empty["updateMask"], serde_json::json!({"paths": []}));

        let mut wrong: Map<String, Value> = serde_json::from_str(r#"{"updateMask":7}"#).unwrap();
        assert!(update_mask("updateMask", &mut wrong).is_err());
    }

    #[test]
    fn query_parameters_become_typed_json() {
        let mut object = Map::new();
        apply_query(
            &SPEC,
            "page.page_size=10&eventTypes=a&event_types=b&minAmount=-5&active=true&status=STATUS_OPEN",
            &mut object,
        )
        .unwrap();
        assert_eq!(
            Value::Object(object),
            serde_json::json!({
                "page": {"pageSize": 10},
                "eventTypes": ["a", "b"],
                "minAmount": "-5",
                "active": true,
                "status": "STATUS_OPEN",
            })
        );
    }

    #[test]
    fn bad_query_parameters_are_named() {
        let mut object = Map::new();
        let problem =
            apply_query(&SPEC, "page.pageSize=ten&nope=1&active=yes&minAmount=1&minAmount=2", &mut object)
                .unwrap_err();
        assert_eq!(problem.status, 400);
        let fields: Vec<(&str, &str)> =
            problem.violations.iter().map(|v| (v.field.as_str(), v.code.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("page.pageSize", "INVALID_VALUE"),
                ("nope", "UNKNOWN_FIELD"),
                ("active", "INVALID_VALUE"),
                ("minAmount", "DUPLICATE")
            ]
        );
    }

    #[test]
    fn unknown_json_fields_are_named_with_their_path() {
        use bank_proto::identity::v1::{ListMySessionsRequest, LoginRequest};
        let err = serde_path_to_error::deserialize::<_, LoginRequest>(
            serde_json::json!({"email": "a", "admin": true}),
        )
        .unwrap_err();
        let problem = json_problem(err);
        assert_eq!(problem.detail, "unknown field `admin`");
        assert_eq!(problem.violations[0].field, "admin");

        let err = serde_path_to_error::deserialize::<_, ListMySessionsRequest>(
            serde_json::json!({"page": {"pageSize": 1, "size": 2}}),
        )
        .unwrap_err();
        assert_eq!(json_problem(err).violations[0].field, "page.size");

        let err = serde_path_to_error::deserialize::<_, ListMySessionsRequest>(
            serde_json::json!({"page": {"pageSize": "x"}}),
        )
        .unwrap_err();
        let problem = json_problem(err);
        assert_eq!(problem.violations[0].field, "page.pageSize");
        assert_eq!(problem.violations[0].code, "INVALID_VALUE");
    }

    #[test]
    fn json_depth_skips_strings() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"1"), 0);
    }

    #[test]
    fn internal_metadata_never_crosses() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("x-user-id", HeaderValue::from_static("someone-else"));
        headers.insert("x-roles", HeaderValue::from_static("admin"));
        headers.insert("idempotency-key", HeaderValue::from_static("k1"));
        headers.insert("cookie", HeaderValue::from_static("session=1"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let mut metadata = MetadataMap::new();
        forward_metadata(&headers, Some("rid-1"), Some("203.0.113.9".parse().unwrap()), &mut metadata);
        assert_eq!(metadata.get("x-forwarded-for").unwrap(), "203.0.113.9");
        assert_eq!(metadata.get("authorization").unwrap(), "Bearer t");
        assert_eq!(metadata.get("idempotency-key").unwrap(), "k1");
        assert_eq!(metadata.get("x-request-id").unwrap(), "rid-1");
        for name in ["x-user-id", "x-roles", "cookie"] {
            assert!(metadata.get(name).is_none(), "{name} crossed");
        }
    }
}
