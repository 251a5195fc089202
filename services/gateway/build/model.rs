//! Reads every `google.api.http` annotation of a `bank.*` service into a [`Route`], refusing anything
//! outside the supported subset:
//!
//! - unary RPCs only;
//! - exactly one binding: `get`, `put`, `post`, `patch` or `delete` (no `custom`, no
//!   `additional_bindings`, no `selector`);
//! - a path template under `/api/v1/` of literal segments and `{field}` variables, each naming a
//!   top-level singular `string` field of the request (no `{field=pattern}`, no `{a.b}`, no
//!   wildcards, no `:verb` suffix);
//! - `body: "*"`, `body: "<top-level singular message field>"` or no body (never on GET/DELETE);
//! - every request field that is neither a path variable nor in the body becomes a query
//!   parameter: scalars, enums, repeated scalars/enums, the well-known types whose JSON is a
//!   string (`Timestamp`, `Duration`, `FieldMask`) or a scalar (the wrappers), and singular
//!   messages flattened into dotted names (`page.page_size`);
//! - `response_body` only naming a top-level `google.api.HttpBody` field (answered as raw bytes).

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, Kind,
    MessageDescriptor, MethodDescriptor, Value,
};

/// The RPCs that need no token (identity's `grpc::PUBLIC_RPCS`, without the leading slash).
pub(crate) const PUBLIC_RPCS: &[&str] = &[
    "bank.identity.v1.IdentityService/Register",
    "bank.identity.v1.IdentityService/VerifyEmail",
    "bank.identity.v1.IdentityService/ResendVerificationEmail",
    "bank.identity.v1.IdentityService/Login",
    "bank.identity.v1.IdentityService/CompleteMfaLogin",
    "bank.identity.v1.IdentityService/RefreshTokens",
    "bank.identity.v1.IdentityService/RequestPasswordReset",
    "bank.identity.v1.IdentityService/ConfirmPasswordReset",
    "bank.identity.v1.IdentityService/GetJwks",
    "bank.identity.v1.IdentityService/IssueServiceToken",
];

/// The upstreams the gateway has a channel for: `bank.<upstream>.v1` packages.
pub(crate) const UPSTREAMS: &[&str] = &["identity", "accounts", "ledger", "cards", "notifications"];

/// How deep nested request messages are flattened into dotted query parameters.
const MAX_QUERY_DEPTH: usize = 4;

/// An HTTP method of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verb {
    Get,
    Put,
    Post,
    Patch,
    Delete,
}

impl Verb {
    /// `GET`, `POST`, ...
    pub(crate) fn upper(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }

    /// `get`, `post`, ...: the OpenAPI operation key and the axum routing function.
    pub(crate) fn lower(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Put => "put",
            Verb::Post => "post",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    /// Whether clients may send an `Idempotency-Key` for it.
    pub(crate) fn mutates(self) -> bool {
        match self {
            Verb::Get => false,
            Verb::Put | Verb::Post | Verb::Patch | Verb::Delete => true,
        }
    }
}

/// Where the request body goes.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// No body: every field not in the path is a query parameter.
    None,
    /// `body: "*"`: the body is the request message (minus the path variables).
    All,
    /// `body: "<field>"`: the body is that field; the rest are query parameters.
    Field(FieldDescriptor),
}

/// The JSON shape of a query parameter's value.
#[derive(Debug, Clone)]
pub(crate) enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float,
    Enum(EnumDescriptor),
    /// `google.protobuf.Timestamp`: an RFC 3339 string.
    Timestamp,
    /// `google.protobuf.Duration`: `"1.5s"`.
    Duration,
    /// `google.protobuf.FieldMask`: `"a,b.c"`.
    FieldMask,
}

impl Scalar {
    /// The runtime `Kind` variant it is transcoded with.
    pub(crate) fn runtime_kind(&self) -> &'static str {
        match self {
            Scalar::String | Scalar::Bytes | Scalar::Timestamp | Scalar::Duration | Scalar::FieldMask => {
                "Kind::String"
            }
            Scalar::Bool => "Kind::Bool",
            Scalar::Int32 => "Kind::Int32",
            Scalar::Uint32 => "Kind::Uint32",
            Scalar::Int64 => "Kind::Int64",
            Scalar::Uint64 => "Kind::Uint64",
            Scalar::Float => "Kind::Float",
            Scalar::Enum(_) => "Kind::Enum",
        }
    }
}

/// One query parameter: a (possibly nested) request field.
#[derive(Debug, Clone)]
pub(crate) struct QueryParam {
    /// Dotted proto field names: `page.page_size`.
    pub(crate) proto: String,
    /// Dotted JSON names: `page.pageSize` (documented; both spellings are accepted).
    pub(crate) json: String,
    /// The JSON names along the way: `["page", "pageSize"]`.
    pub(crate) json_path: Vec<String>,
    /// The leaf field (for its comment).
    pub(crate) field: FieldDescriptor,
    /// The value's JSON shape.
    pub(crate) scalar: Scalar,
    /// Whether it may be repeated (`?a=1&a=2`).
    pub(crate) repeated: bool,
}

/// One generated route.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) method: MethodDescriptor,
    pub(crate) upstream: &'static str,
    pub(crate) verb: Verb,
    /// The template, which is also axum's path syntax: `/api/v1/accounts/{account_id}`.
    pub(crate) path: String,
    pub(crate) path_params: Vec<FieldDescriptor>,
    pub(crate) body: Body,
    pub(crate) query: Vec<QueryParam>,
    /// A `google.api.HttpBody` field answered as raw bytes.
    pub(crate) response_body: Option<FieldDescriptor>,
    pub(crate) public: bool,
}

impl Route {
    /// `bank.identity.v1.IdentityService/Register`.
    pub(crate) fn rpc(&self) -> String {
        format!("{}/{}", self.method.parent_service().full_name(), self.method.name())
    }
}

/// Every annotated RPC of every `bank.*` service, sorted by path then method; or every problem.
pub(crate) fn routes(pool: &DescriptorPool) -> Result<Vec<Route>, Vec<String>> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Err(vec!["the extension google.api.http is not in the descriptor set".to_owned()]);
    };
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for service in pool.services().filter(|s| s.package_name().starts_with("bank.")) {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rpc = format!("{}/{}", service.full_name(), method.name());
            match route(&method, &options, &http) {
                Ok(route) => routes.push(route),
                Err(problem) => problems.push(format!("{rpc}: {problem}")),
            }
        }
    }
    check_the_whole(&routes, &mut problems);
    if problems.is_empty() {
        routes.sort_by(|a, b| (&a.path, a.verb).cmp(&(&b.path, b.verb)));
        Ok(routes)
    } else {
        Err(problems)
    }
}

/// Checks across routes: unique method + path, path variables that axum can route, public RPCs
/// that exist.
fn check_the_whole(routes: &[Route], problems: &mut Vec<String>) {
    let mut seen: BTreeMap<(String, Verb), String> = BTreeMap::new();
    let mut shapes: BTreeMap<String, (String, String)> = BTreeMap::new();
    for route in routes {
        if let Some(other) = seen.insert((route.path.clone(), route.verb), route.rpc()) {
            problems.push(format!(
                "{}: {} {} is already bound to {other}",
                route.rpc(),
                route.verb.upper(),
                route.path
            ));
        }
        // `/a/{x}` and `/a/{y}` are one route to the router: the variable names must agree.
        let shape = route
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        match shapes.get(&shape) {
            Some((path, rpc)) if *path != route.path => problems.push(format!(
                "{}: {} names its path variables differently from {path} ({rpc})",
                route.rpc(),
                route.path
            )),
            Some(_) => {}
            None => {
                shapes.insert(shape, (route.path.clone(), route.rpc()));
            }
        }
    }
    let annotated: BTreeSet<String> = routes.iter().map(Route::rpc).collect();
    for public in PUBLIC_RPCS {
        if !annotated.contains(*public) {
            problems
                .push(format!("{public}: listed as public but has no supported google.api.http annotation"));
        }
    }
}

fn route(
    method: &MethodDescriptor,
    options: &DynamicMessage,
    http: &ExtensionDescriptor,
) -> Result<Route, String> {
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err("streaming RPCs cannot have a google.api.http annotation (unary only)".to_owned());
    }
    let value = options.get_extension(http);
    let Some(rule) = value.as_message() else {
        return Err("google.api.http is not a message".to_owned());
    };
    let text = |name: &str| -> String {
        rule.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    };
    if !text("selector").is_empty() {
        return Err("`selector` is not supported".to_owned());
    }
    if rule
        .get_field_by_name("additional_bindings")
        .and_then(|v| v.as_list().map(<[Value]>::len))
        .unwrap_or(0)
        > 0
    {
        return Err("additional_bindings are not supported (one binding per RPC)".to_owned());
    }
    if rule.has_field_by_name("custom") {
        return Err("custom HTTP methods (`custom`) are not supported".to_owned());
    }
    let mut bindings = Vec::new();
    for (name, verb) in [
        ("get", Verb::Get),
        ("put", Verb::Put),
        ("post", Verb::Post),
        ("patch", Verb::Patch),
        ("delete", Verb::Delete),
    ] {
        if rule.has_field_by_name(name) {
            bindings.push((verb, text(name)));
        }
    }
    let [(verb, path)] = bindings.as_slice() else {
        return Err("expected exactly one of get, put, post, patch, delete".to_owned());
    };
    let (verb, path) = (*verb, path.clone());

    let input = method.input();
    let path_params = parse_path(&path, &input)?;

    let body = match text("body").as_str() {
        "" => Body::None,
        "*" => Body::All,
        name => {
            let field = input
                .get_field_by_name(name)
                .ok_or_else(|| format!("body `{name}` is not a field of {}", input.full_name()))?;
            if field.is_list() || field.is_map() || field.kind().as_message().is_none() {
                return Err(format!("body `{name}` must be a singular message field"));
            }
            if path_params.iter().any(|p| p.name() == name) {
                return Err(format!("body `{name}` is also a path variable"));
            }
            Body::Field(field)
        }
    };
    if matches!(verb, Verb::Get | Verb::Delete) && !matches!(body, Body::None) {
        return Err(format!("{} bindings cannot have a body", verb.upper()));
    }

    let mut query = Vec::new();
    match &body {
        Body::All => {}
        Body::None | Body::Field(_) => {
            let body_field = match &body {
                Body::Field(f) => Some(f.name().to_owned()),
                Body::None | Body::All => None,
            };
            for field in input.fields() {
                if path_params.iter().any(|p| p.name() == field.name())
                    || body_field.as_deref() == Some(field.name())
                {
                    continue;
                }
                flatten(&field, "", "", &[], &mut Vec::new(), &mut query)?;
            }
        }
    }

    let response_body = match text("response_body").as_str() {
        "" => None,
        name => {
            let output = method.output();
            let field = output
                .get_field_by_name(name)
                .ok_or_else(|| format!("response_body `{name}` is not a field of {}", output.full_name()))?;
            let is_http_body = !field.is_list()
                && field.kind().as_message().is_some_and(|m| m.full_name() == "google.api.HttpBody");
            if !is_http_body {
                return Err(format!(
                    "response_body `{name}` must be a singular google.api.HttpBody field (other forms are not supported)"
                ));
            }
            Some(field)
        }
    };

    let package = method.parent_service().package_name().to_owned();
    let upstream = package
        .strip_prefix("bank.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|name| UPSTREAMS.iter().copied().find(|u| *u == name))
        .ok_or_else(|| {
            format!("no upstream serves package {package} (add it to the gateway's Upstreams and config)")
        })?;

    let rpc = format!("{}/{}", method.parent_service().full_name(), method.name());
    Ok(Route {
        method: method.clone(),
        upstream,
        verb,
        path,
        path_params,
        body,
        query,
        response_body,
        public: PUBLIC_RPCS.contains(&rpc.as_str()),
    })
}

/// Parses a path template into its variables (top-level singular string fields).
fn parse_path(template: &str, input: &MessageDescriptor) -> Result<Vec<FieldDescriptor>, String> {
    if !template.starts_with("/api/v1/") {
        return Err(format!("path `{template}` must start with /api/v1/"));
    }
    let mut params: Vec<FieldDescriptor> = Vec::new();
    for segment in template[1..].split('/') {
        if segment.is_empty() {
            return Err(format!("path `{template}` has an empty segment or a trailing slash"));
        }
        if let Some(inner) = segment.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(if inner.contains("}:") {
                    format!("path `{template}`: custom verbs (`:verb`) are not supported")
                } else {
                    format!("path `{template}`: a variable must be a whole segment")
                });
            };
            if name.contains('=') {
                return Err(format!(
                    "path `{template}`: variables with patterns (`{{{name}}}`) are not supported"
                ));
            }
            if name.contains('.') {
                return Err(format!(
                    "path `{template}`: nested path variables (`{{{name}}}`) are not supported"
                ));
            }
            let field = input.get_field_by_name(name).ok_or_else(|| {
                format!("path `{template}`: `{name}` is not a field of {}", input.full_name())
            })?;
            if field.is_list() || field.is_map() || !matches!(field.kind(), Kind::String) {
                return Err(format!("path `{template}`: `{name}` must be a singular string field"));
            }
            if params.iter().any(|p| p.name() == name) {
                return Err(format!("path `{template}`: `{name}` appears twice"));
            }
            params.push(field);
        } else if segment.contains(':') {
            return Err(format!("path `{template}`: custom verbs (`:verb`) are not supported"));
        } else if segment.contains('*') {
            return Err(format!("path `{template}`: wildcards are not supported"));
        } else if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err(format!(
                "path `{template}`: segment `{segment}` has characters outside [A-Za-z0-9-._~]"
            ));
        }
    }
    Ok(params)
}

/// Adds `field` (under `proto_prefix`/`json_prefix`) as query parameters: a leaf, or a singular
/// message flattened into its fields.
fn flatten(
    field: &FieldDescriptor,
    proto_prefix: &str,
    json_prefix: &str,
    json_path: &[String],
    visiting: &mut Vec<String>,
    out: &mut Vec<QueryParam>,
) -> Result<(), String> {
    let proto = format!("{proto_prefix}{}", field.name());
    let json = format!("{json_prefix}{}", field.json_name());
    let mut path = json_path.to_vec();
    path.push(field.json_name().to_owned());
    if field.is_map() {
        return Err(format!("map field `{proto}` cannot be a query parameter (use a body)"));
    }
    let leaf = |scalar: Scalar| QueryParam {
        proto: proto.clone(),
        json: json.clone(),
        json_path: path.clone(),
        field: field.clone(),
        scalar,
        repeated: field.is_list(),
    };
    let kind = field.kind();
    let Kind::Message(message) = kind.clone() else {
        out.push(leaf(scalar_of(&kind).ok_or_else(|| format!("field `{proto}` has an unsupported type"))?));
        return Ok(());
    };
    if let Some(scalar) = well_known_scalar(&message) {
        out.push(leaf(scalar));
        return Ok(());
    }
    if message.full_name().starts_with("google.protobuf.") {
        return Err(format!("field `{proto}` ({}) cannot be a query parameter", message.full_name()));
    }
    if field.is_list() {
        return Err(format!("repeated message field `{proto}` cannot be a query parameter (use a body)"));
    }
    if visiting.iter().any(|m| m == message.full_name()) || visiting.len() >= MAX_QUERY_DEPTH {
        return Err(format!("field `{proto}` nests too deeply (or recursively) to be a query parameter"));
    }
    visiting.push(message.full_name().to_owned());
    for child in message.fields() {
        flatten(&child, &format!("{proto}."), &format!("{json}."), &path, visiting, out)?;
    }
    visiting.pop();
    Ok(())
}

fn scalar_of(kind: &Kind) -> Option<Scalar> {
    Some(match kind {
        Kind::Double | Kind::Float => Scalar::Float,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Scalar::Int32,
        Kind::Uint32 | Kind::Fixed32 => Scalar::Uint32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Scalar::Int64,
        Kind::Uint64 | Kind::Fixed64 => Scalar::Uint64,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Enum(e) => Scalar::Enum(e.clone()),
        Kind::Message(_) => return None,
    })
}

/// The well-known types whose JSON is one string or scalar.
pub(crate) fn well_known_scalar(message: &MessageDescriptor) -> Option<Scalar> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => Scalar::Timestamp,
        "google.protobuf.Duration" => Scalar::Duration,
        "google.protobuf.FieldMask" => Scalar::FieldMask,
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => Scalar::Float,
        "google.protobuf.Int64Value" => Scalar::Int64,
        "google.protobuf.UInt64Value" => Scalar::Uint64,
        "google.protobuf.Int32Value" => Scalar::Int32,
        "google.protobuf.UInt32Value" => Scalar::Uint32,
        "google.protobuf.BoolValue" => Scalar::Bool,
        "google.protobuf.StringValue" => Scalar::String,
        "google.protobuf.BytesValue" => Scalar::Bytes,
        _ => return None,
    })
}

/// The leading (else trailing) comment of the element at `path` in its file, cleaned up.
pub(crate) fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let Some(info) = &file.file_descriptor_proto().source_code_info else {
        return String::new();
    };
    let Some(location) = info.location.iter().find(|l| l.path == path) else {
        return String::new();
    };
    let raw = location
        .leading_comments
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        .or(location.trailing_comments.as_deref())
        .unwrap_or_default();
    raw.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}
