//! Writes the OpenAPI 3.1 document of the generated routes from the same descriptors: parameters,
//! request bodies and responses as JSON Schema of the canonical proto3 JSON mapping (int64 as
//! strings, enums as value names, `Timestamp` as a date-time string), one component per message and
//! enum, the bearer scheme on every non-public route, the `Idempotency-Key` header on mutating
//! routes and the problem+json error responses. Descriptions are the proto comments.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{
    DescriptorPool, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value as Reflect,
};
use serde_json::{Map, Value, json};

use crate::model::{self, Body, Route, Scalar};

const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The error responses every operation documents: (status, component name, description, example reason).
const ERRORS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "The request is invalid (malformed JSON, unknown field, bad value); field violations say which.",
        "INVALID_ARGUMENT",
        "VALIDATION_FAILED",
    ),
    (
        "401",
        "Unauthorized",
        "No valid credentials (missing, expired or revoked token, wrong password), or a second factor that is not recent enough. Tell them apart by `WWW-Authenticate` (and `reason`): `error=\"invalid_token\"` (`TOKEN_EXPIRED`, `TOKEN_REVOKED`) means refresh or log in again; `error=\"insufficient_user_authentication\", acr_values=\"mfa\", max_age=N` (`STEP_UP_REQUIRED`, RFC 9470; also `acrValues`/`maxAge` in the body) means call POST /api/v1/auth/step-up and retry — do not refresh. A user with no second factor gets 403 `MFA_ENROLMENT_REQUIRED` instead: enrol (the confirmation answers a stepped-up pair).",
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    ),
    ("403", "Forbidden", "Authenticated, but not allowed.", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    (
        "404",
        "NotFound",
        "No such object (or it belongs to someone else), or no such route.",
        "NOT_FOUND",
        "NOT_FOUND",
    ),
    (
        "409",
        "Conflict",
        "The object's state does not allow this now (concurrent change, state conflict).",
        "ABORTED",
        "CONFLICT",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The request body is larger than the gateway accepts.",
        "INVALID_ARGUMENT",
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "A request body that is not `application/json`.",
        "INVALID_ARGUMENT",
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    (
        "422",
        "UnprocessableContent",
        "A business rule refused the request (e.g. insufficient funds).",
        "FAILED_PRECONDITION",
        "FAILED_PRECONDITION",
    ),
    (
        "429",
        "TooManyRequests",
        "Rate limited; retry after `Retry-After` seconds.",
        "RESOURCE_EXHAUSTED",
        "RATE_LIMITED",
    ),
    (
        "500",
        "InternalError",
        "Unexpected server error; the details are only in the server log under the request id.",
        "INTERNAL",
        "INTERNAL",
    ),
    (
        "503",
        "Unavailable",
        "A service or dependency is unavailable, its circuit is open, or the gateway is at capacity; safe to retry after `Retry-After` (with the same `Idempotency-Key`).",
        "UNAVAILABLE",
        "UNAVAILABLE",
    ),
    (
        "504",
        "GatewayTimeout",
        "The deadline passed before the outcome was known; retry with the same `Idempotency-Key` to learn it.",
        "DEADLINE_EXCEEDED",
        "DEADLINE_EXCEEDED",
    ),
];

/// The whole document.
pub(crate) fn document(pool: &DescriptorPool, routes: &[Route]) -> Result<Value, String> {
    let mut schemas = Schemas::new(pool, routes);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    let mut operation_ids = BTreeSet::new();

    for route in routes {
        let service = route.method.parent_service();
        tags.entry(service.name().to_owned())
            .or_insert_with(|| model::comment(&service.parent_file(), service.path()));
        let operation_id = format!("{}_{}", service.name(), route.method.name());
        if !operation_ids.insert(operation_id.clone()) {
            return Err(format!("{}: operationId {operation_id} is not unique", route.rpc()));
        }
        let operation = operation(&mut schemas, route, &operation_id);
        paths.entry(route.path.clone()).or_default().insert(route.verb.lower().to_owned(), operation);
    }

    // The hand-written routes.
    let jwks = schemas.message_ref_by_name("bank.identity.v1.GetJwksResponse")?;
    paths.entry("/.well-known/jwks.json".to_owned()).or_default().insert(
        "get".to_owned(),
        json!({
            "operationId": "WellKnownJwks",
            "tags": ["IdentityService"],
            "summary": "The JSON Web Key Set (alias of GET /api/v1/auth/jwks).",
            "description": "The JWK Set of every published signing key, `{\"keys\": [...]}` (the `keys` member is always present). Public.",
            "security": [],
            "parameters": [{"$ref": "#/components/parameters/RequestId"}],
            "responses": success_and_errors(&json!({"application/json": {"schema": jwks}}), "The key set.", false),
        }),
    );
    paths.entry("/api/v1/openapi.json".to_owned()).or_default().insert(
        "get".to_owned(),
        json!({
            "operationId": "GetOpenApiDocument",
            "tags": ["Gateway"],
            "summary": "This OpenAPI 3.1 document.",
            "security": [],
            "parameters": [{"$ref": "#/components/parameters/RequestId"}],
            "responses": success_and_errors(
                &json!({"application/json": {"schema": {"type": "object"}}}),
                "The document.",
                false,
            ),
        }),
    );
    tags.insert("Gateway".to_owned(), "The gateway's own resources.".to_owned());

    schemas.drain();
    let mut components_schemas = std::mem::take(&mut schemas.components);
    components_schemas.insert("Problem".to_owned(), problem_schema(pool));
    components_schemas.insert("FieldViolation".to_owned(), violation_schema());

    let mut responses = Map::new();
    for (status, name, description, code, reason) in ERRORS {
        responses.insert((*name).to_owned(), problem_response(status, description, code, reason));
    }
    responses.insert(
        "Error".to_owned(),
        problem_response("500", "Any other error, in the same shape.", "INTERNAL", "INTERNAL"),
    );

    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bankmesh API",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The REST/JSON API of bankmesh, generated from the google.api.http annotations of its gRPC contracts.",
            "description": "Every route transcodes to one gRPC call. Bodies and answers are canonical proto3 JSON: \
                field names in lowerCamelCase (the original snake_case names are accepted in requests), \
                64-bit integers as strings, enums as value names, timestamps as RFC 3339 strings, \
                default values omitted. Unknown fields are refused. Query parameters use the same names, \
                nested fields as dotted names (`page.pageSize`). Every error is `application/problem+json` \
                (RFC 9457) with the gRPC `code`, a stable `reason`, field `violations` when present and the \
                `request_id` (also echoed in `X-Request-Id`).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": tags.into_iter().map(|(name, description)| json!({"name": name, "description": description})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": components_schemas,
            "responses": responses,
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "Makes a retried request safe: the same key with the same request answers the first outcome; with a different request IDEMPOTENCY_KEY_REUSED. Required by money-moving routes (IDEMPOTENCY_KEY_REQUIRED); ignored where the route says so.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                },
                "RequestId": {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": false,
                    "description": "The caller's request id (echoed back); one is created when absent or invalid.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The request id (the caller's, or a new one), also in problem documents.",
                    "required": true,
                    "schema": {"type": "string"},
                },
                "WwwAuthenticate": {
                    "description": "The Bearer challenge of a 401 (RFC 6750, RFC 9470): `error=\"invalid_token\"`, or `error=\"insufficient_user_authentication\"` with `acr_values` and `max_age` when a step-up is needed.",
                    "required": true,
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RateLimitLimit": {
                    "description": "The request quota of the most constrained limit that applies (per client IP, per user, per route class, failed logins).",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RateLimitRemaining": {
                    "description": "Requests left of that quota now.",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RateLimitReset": {
                    "description": "Seconds until that quota is whole again.",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token (EdDSA `at+jwt`) from POST /api/v1/auth/login, /api/v1/auth/refresh or /api/v1/auth/token.",
                },
            },
        },
    }))
}

fn operation(schemas: &mut Schemas<'_>, route: &Route, operation_id: &str) -> Value {
    let method = &route.method;
    let description = model::comment(&method.parent_file(), method.path());
    let mut parameters = Vec::new();
    for field in &route.path_params {
        parameters.push(json!({
            "name": field.name(),
            "in": "path",
            "required": true,
            "description": schemas.field_description(field),
            "schema": {"type": "string", "minLength": 1},
        }));
    }
    for param in &route.query {
        let mut schema = schemas.scalar_schema(&param.scalar);
        if param.repeated {
            schema = json!({"type": "array", "items": schema});
        }
        let mut object = json!({
            "name": param.json,
            "in": "query",
            "required": false,
            "description": schemas.field_description(&param.field),
            "schema": schema,
        });
        if param.repeated {
            object["style"] = json!("form");
            object["explode"] = json!(true);
        }
        parameters.push(object);
    }
    if route.verb.mutates() {
        parameters.push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
    }
    parameters.push(json!({"$ref": "#/components/parameters/RequestId"}));

    let mut op = json!({
        "operationId": operation_id,
        "tags": [method.parent_service().name()],
        "summary": summary(&description),
        "description": description,
        "x-grpc-method": route.rpc(),
        "security": if route.public { json!([]) } else { json!([{"bearerAuth": []}]) },
        "parameters": parameters,
    });

    let body_schema = match &route.body {
        Body::None => None,
        Body::All if route.path_params.is_empty() => Some(schemas.message_ref(&method.input())),
        Body::All => {
            // The path variables come from the URL, never from the body.
            let mut schema = schemas.message_schema(&method.input());
            for field in &route.path_params {
                if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                    properties.remove(field.json_name());
                }
                if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
                    required.retain(|r| r.as_str() != Some(field.json_name()));
                }
            }
            Some(schema)
        }
        Body::Field(field) => Some(schemas.field_type_schema(field)),
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": false,
            "description": "Canonical proto3 JSON; an empty body is the empty object.",
            "content": {"application/json": {"schema": schema}},
        });
    }

    let output = method.output();
    let success_description = Some(model::comment(&output.parent_file(), output.path()))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "OK".to_owned());
    let content = match &route.response_body {
        None => json!({"application/json": {"schema": schemas.message_ref(&output)}}),
        Some(field) => json!({
            "*/*": {
                "schema": {"type": "string", "format": "binary"},
                "x-description": schemas.field_description(field),
            }
        }),
    };
    let mut responses = success_and_errors(&content, &success_description, !matches!(route.body, Body::None));
    if route.response_body.is_some()
        && output.get_field_by_name("filename").is_some()
        && let Some(headers) = responses.pointer_mut("/200/headers").and_then(Value::as_object_mut)
    {
        headers.insert(
            "Content-Disposition".to_owned(),
            json!({"description": "`attachment` with the suggested file name.", "schema": {"type": "string"}}),
        );
    }
    if route.rpc() == "bank.identity.v1.IdentityService/Login" {
        responses["423"] = problem_response(
            "423",
            "The right password on an account locked after failed logins: `lockedUntil` says until when, `Retry-After` how many seconds are left. A wrong password on a locked account answers 401 like any other.",
            "FAILED_PRECONDITION",
            "ACCOUNT_LOCKED",
        );
    }
    op["responses"] = responses;
    op
}

/// `200` with `content`, and every error response.
fn success_and_errors(content: &Value, description: &str, has_body: bool) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".to_owned(),
        json!({
            "description": description,
            "headers": rate_limit_headers(json!({"X-Request-Id": {"$ref": "#/components/headers/RequestId"}})),
            "content": content,
        }),
    );
    for (status, name, ..) in ERRORS {
        if matches!(*status, "413" | "415") && !has_body {
            continue;
        }
        responses.insert((*status).to_owned(), json!({"$ref": format!("#/components/responses/{name}")}));
    }
    responses.insert("default".to_owned(), json!({"$ref": "#/components/responses/Error"}));
    Value::Object(responses)
}

/// Adds the `RateLimit-*` headers to a response's headers.
fn rate_limit_headers(mut headers: Value) -> Value {
    headers["RateLimit-Limit"] = json!({"$ref": "#/components/headers/RateLimitLimit"});
    headers["RateLimit-Remaining"] = json!({"$ref": "#/components/headers/RateLimitRemaining"});
    headers["RateLimit-Reset"] = json!({"$ref": "#/components/headers/RateLimitReset"});
    headers
}

fn problem_response(status: &str, description: &str, code: &str, reason: &str) -> Value {
    let status_number: u16 = status.parse().unwrap_or(500);
    let mut headers = json!({"X-Request-Id": {"$ref": "#/components/headers/RequestId"}});
    if matches!(status, "423" | "429" | "503") {
        headers["Retry-After"] = json!({"$ref": "#/components/headers/RetryAfter"});
    }
    if status == "401" {
        headers["WWW-Authenticate"] = json!({"$ref": "#/components/headers/WwwAuthenticate"});
    }
    if status == "429" {
        headers = rate_limit_headers(headers);
    }
    let mut example = json!({
        "type": "about:blank",
        "title": title(status_number),
        "status": status_number,
        "detail": description,
        "code": code,
        "reason": reason,
        "request_id": "0190b7a2-6c1e-7d4a-9a51-3f2c8e4b1d20",
    });
    if status == "400" {
        example["detail"] = json!("the request is invalid");
        example["violations"] =
            json!([{"field": "email", "code": "REQUIRED", "description": "email is required"}]);
    }
    json!({
        "description": description,
        "headers": headers,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}},
    })
}

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        423 => "Locked",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

fn problem_schema(pool: &DescriptorPool) -> Value {
    let reasons: Vec<String> = pool
        .get_enum_by_name("bank.common.v1.ErrorReason")
        .map(|e| {
            e.values()
                .filter_map(|v| v.name().strip_prefix("ERROR_REASON_").map(str::to_owned))
                .filter(|n| n != "UNSPECIFIED")
                .collect()
        })
        .unwrap_or_default();
    json!({
        "type": "object",
        "description": "RFC 9457 problem details: the one error shape of the API.",
        "required": ["type", "title", "status", "detail", "code", "reason", "request_id"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "description": "The problem type (`about:blank`: see `reason`)."},
            "title": {"type": "string", "description": "The HTTP status phrase."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status."},
            "detail": {"type": "string", "description": "A client-safe explanation of this occurrence."},
            "code": {"type": "string", "enum": GRPC_CODES, "description": "The gRPC status code name."},
            "reason": {"type": "string", "enum": reasons, "description": "The stable reason (bank.common.v1.ErrorReason without its prefix)."},
            "violations": {"type": "array", "items": {"$ref": "#/components/schemas/FieldViolation"}, "description": "The invalid fields, when known."},
            "request_id": {"type": "string", "description": "The request id (also in `X-Request-Id`); quote it to support."},
            "lockedUntil": {"type": "string", "format": "date-time", "description": "`ACCOUNT_LOCKED` only: when the lock ends (RFC 3339)."},
            "acrValues": {"type": "string", "description": "`STEP_UP_REQUIRED` only: the authentication context that satisfies it (`mfa`)."},
            "maxAge": {"type": "string", "description": "`STEP_UP_REQUIRED` only: how recent (seconds) the second factor must be."},
        },
        "additionalProperties": false,
    })
}

fn violation_schema() -> Value {
    json!({
        "type": "object",
        "description": "One invalid request field.",
        "required": ["field", "code", "description"],
        "properties": {
            "field": {"type": "string", "description": "The field's path, e.g. `amount.minorUnits` or a query parameter name."},
            "code": {"type": "string", "description": "A stable code, e.g. `REQUIRED`, `UNKNOWN_FIELD`, `INVALID_VALUE`."},
            "description": {"type": "string", "description": "What is wrong."},
        },
        "additionalProperties": false,
    })
}

fn summary(description: &str) -> String {
    let paragraph = description.split("\n\n").next().unwrap_or_default().replace('\n', " ");
    match paragraph.find(". ") {
        Some(end) => paragraph[..=end].to_owned(),
        None => paragraph,
    }
}

/// Collects component schemas for every message and enum the routes reach.
struct Schemas<'a> {
    pool: &'a DescriptorPool,
    behavior: Option<ExtensionDescriptor>,
    /// Messages that appear in some answer: their REQUIRED fields are not `required` in JSON,
    /// since proto3 JSON omits default values.
    in_answers: BTreeSet<String>,
    components: BTreeMap<String, Value>,
    pending: Vec<Pending>,
    queued: BTreeSet<String>,
}

enum Pending {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl<'a> Schemas<'a> {
    fn new(pool: &'a DescriptorPool, routes: &[Route]) -> Self {
        let mut in_answers = BTreeSet::new();
        for route in routes {
            reach(&route.method.output(), &mut in_answers);
        }
        Self {
            pool,
            behavior: pool.get_extension_by_name("google.api.field_behavior"),
            in_answers,
            components: BTreeMap::new(),
            pending: Vec::new(),
            queued: BTreeSet::new(),
        }
    }

    fn message_ref_by_name(&mut self, name: &str) -> Result<Value, String> {
        let message =
            self.pool.get_message_by_name(name).ok_or_else(|| format!("{name} is not in the contracts"))?;
        Ok(self.message_ref(&message))
    }

    /// A `$ref` to the message's component (queued), or the inline schema of a well-known type.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known_schema(message) {
            return schema;
        }
        let name = message.full_name().to_owned();
        if self.queued.insert(name.clone()) {
            self.pending.push(Pending::Message(message.clone()));
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn enum_ref(&mut self, e: &EnumDescriptor) -> Value {
        if e.full_name() == "google.protobuf.NullValue" {
            return json!({"type": "null"});
        }
        let name = e.full_name().to_owned();
        if self.queued.insert(name.clone()) {
            self.pending.push(Pending::Enum(e.clone()));
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn drain(&mut self) {
        while let Some(next) = self.pending.pop() {
            let (name, schema) = match next {
                Pending::Message(m) => (m.full_name().to_owned(), self.message_schema(&m)),
                Pending::Enum(e) => (e.full_name().to_owned(), enum_schema(&e)),
            };
            self.components.insert(name, schema);
        }
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        let request_only = !self.in_answers.contains(message.full_name());
        for field in message.fields() {
            let mut schema = self.field_type_schema(&field);
            let behaviors = self.behaviors(&field);
            if let Some(object) = schema.as_object_mut() {
                object.insert("description".to_owned(), json!(self.field_description(&field)));
                if behaviors.contains(&3) {
                    object.insert("readOnly".to_owned(), json!(true));
                }
                if behaviors.contains(&4) {
                    object.insert("writeOnly".to_owned(), json!(true));
                }
            }
            if request_only && behaviors.contains(&2) && field.containing_oneof().is_none() {
                required.push(json!(field.json_name()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        let description = model::comment(&message.parent_file(), message.path());
        if !description.is_empty() {
            schema["description"] = json!(description);
        }
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        schema
    }

    /// The schema of a field's value (array for repeated, object for maps), without its description.
    fn field_type_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let entry = field.kind();
            let value = entry.as_message().map(MessageDescriptor::map_entry_value_field);
            let values = value.map_or_else(|| json!({}), |v| self.single_schema(&v.kind()));
            return json!({"type": "object", "additionalProperties": values});
        }
        let single = self.single_schema(&field.kind());
        if field.is_list() { json!({"type": "array", "items": single}) } else { single }
    }

    fn single_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(m) => self.message_ref(m),
            Kind::Enum(e) => self.enum_ref(e),
            Kind::Double | Kind::Float => scalar(&Scalar::Float),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => scalar(&Scalar::Int32),
            Kind::Uint32 | Kind::Fixed32 => scalar(&Scalar::Uint32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => scalar(&Scalar::Int64),
            Kind::Uint64 | Kind::Fixed64 => scalar(&Scalar::Uint64),
            Kind::Bool => scalar(&Scalar::Bool),
            Kind::String => scalar(&Scalar::String),
            Kind::Bytes => scalar(&Scalar::Bytes),
        }
    }

    fn scalar_schema(&mut self, s: &Scalar) -> Value {
        match s {
            Scalar::Enum(e) => self.enum_ref(e),
            Scalar::String
            | Scalar::Bytes
            | Scalar::Bool
            | Scalar::Int32
            | Scalar::Uint32
            | Scalar::Int64
            | Scalar::Uint64
            | Scalar::Float
            | Scalar::Timestamp
            | Scalar::Duration
            | Scalar::FieldMask => scalar(s),
        }
    }

    /// The field's comment, plus what its behaviours and oneof mean for a client.
    fn field_description(&self, field: &FieldDescriptor) -> String {
        let mut text = model::comment(&field.parent_file(), field.path());
        let behaviors = self.behaviors(field);
        let mut notes = Vec::new();
        if behaviors.contains(&2) {
            notes.push("Required.".to_owned());
        }
        if behaviors.contains(&3) {
            notes.push("Output only.".to_owned());
        }
        if behaviors.contains(&4) {
            notes.push("Input only (never answered).".to_owned());
        }
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let members: Vec<String> = oneof.fields().map(|f| format!("`{}`", f.json_name())).collect();
            notes.push(format!("At most one of {} (oneof `{}`).", members.join(", "), oneof.name()));
        }
        if !notes.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&notes.join(" "));
        }
        text
    }

    /// The `google.api.field_behavior` values of a field (2 REQUIRED, 3 OUTPUT_ONLY, 4 INPUT_ONLY).
    fn behaviors(&self, field: &FieldDescriptor) -> Vec<i32> {
        let Some(ext) = &self.behavior else { return Vec::new() };
        let options = field.options();
        if !options.has_extension(ext) {
            return Vec::new();
        }
        let value = options.get_extension(ext);
        value.as_list().map(|l| l.iter().filter_map(Reflect::as_enum_number).collect()).unwrap_or_default()
    }
}

/// Adds every message reachable from `message` to `out`.
fn reach(message: &MessageDescriptor, out: &mut BTreeSet<String>) {
    if !out.insert(message.full_name().to_owned()) {
        return;
    }
    for field in message.fields() {
        if let Kind::Message(child) = field.kind() {
            reach(&child, out);
        }
    }
}

fn enum_schema(e: &EnumDescriptor) -> Value {
    let mut description = model::comment(&e.parent_file(), e.path());
    let mut names = Vec::new();
    for value in e.values() {
        names.push(json!(value.name()));
        let comment = model::comment(&value.parent_file(), value.path()).replace('\n', " ");
        if !comment.is_empty() {
            description.push_str(&format!("\n- `{}`: {comment}", value.name()));
        }
    }
    json!({"type": "string", "enum": names, "description": description.trim()})
}

fn scalar(s: &Scalar) -> Value {
    match s {
        Scalar::String | Scalar::FieldMask | Scalar::Enum(_) => json!({"type": "string"}),
        Scalar::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Scalar::Bool => json!({"type": "boolean"}),
        Scalar::Int32 => json!({"type": "integer", "format": "int32"}),
        Scalar::Uint32 => json!({"type": "integer", "minimum": 0, "maximum": 4_294_967_295_u64}),
        Scalar::Int64 => json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}),
        Scalar::Uint64 => json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}),
        Scalar::Float => json!({"type": "number"}),
        Scalar::Timestamp => json!({"type": "string", "format": "date-time"}),
        Scalar::Duration => json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"}),
    }
}

/// Inline schemas of the well-known types (their JSON is not an object of their fields).
fn well_known_schema(message: &MessageDescriptor) -> Option<Value> {
    if let Some(s) = model::well_known_scalar(message) {
        return Some(scalar(&s));
    }
    Some(match message.full_name() {
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "required": ["@type"],
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": true,
        }),
        _ => return None,
    })
}
