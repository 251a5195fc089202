//! CORS origins: the one normal form that configuration and requests are compared in.

/// `scheme://host[:port]`, lower-cased, the default port dropped; refuses `null`, `*`, paths,
/// credentials and anything but http(s).
pub(crate) fn parse_origin(origin: &str) -> Result<String, String> {
    let trimmed = origin.trim();
    if trimmed == "*" || trimmed.eq_ignore_ascii_case("null") {
        return Err("wildcards and `null` are never allowed".to_owned());
    }
    let uri: http::Uri = trimmed.parse().map_err(|_| "not an origin (scheme://host[:port])".to_owned())?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase).ok_or("the scheme is missing")?;
    if scheme != "https" && scheme != "http" {
        return Err("the scheme must be http or https".to_owned());
    }
    let authority = uri.authority().ok_or("the host is missing")?;
    if authority.as_str().contains('@') {
        return Err("an origin has no credentials".to_owned());
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        || trimmed.ends_with('/')
    {
        return Err("an origin has no path".to_owned());
    }
    let host = authority.host().to_ascii_lowercase();
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        Some(_) | None => format!("{scheme}://{host}"),
    })
}
