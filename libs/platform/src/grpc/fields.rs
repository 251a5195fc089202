//! The request-field parsers every handler uses, and the statuses they answer. One copy: these
//! write the violation codes (`REQUIRED`, `INVALID_FORMAT`, `OUT_OF_RANGE`) clients program
//! against, so they must not drift between services.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{ErrorCode, FieldViolation, ServiceError, idempotency};

/// An internal error: logged once with its cause chain, answered with a generic message.
pub fn internal<E: std::error::Error + 'static>(err: E) -> Status {
    ServiceError::internal(&err).into()
}

/// `VALIDATION_FAILED` with one field violation.
#[must_use]
pub fn invalid(field: &str, code: &str, description: &str) -> Status {
    ServiceError::invalid(vec![FieldViolation::new(field, code, description)]).into()
}

/// A refusal with a stable reason and a client-safe message.
pub fn refused(code: ErrorCode, message: impl Into<String>) -> Status {
    ServiceError::new(code, message).into()
}

/// A required UUID field: `REQUIRED` when empty, `INVALID_FORMAT` when not a UUID.
///
/// # Errors
/// The field's violation.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(invalid(field, "REQUIRED", "is required"));
    }
    Uuid::parse_str(value).map_err(|_| invalid(field, "INVALID_FORMAT", "must be a UUID"))
}

/// An optional UUID field (a filter): empty is `None`.
///
/// # Errors
/// `INVALID_FORMAT` when set but not a UUID.
pub fn optional_uuid(field: &str, value: &str) -> Result<Option<Uuid>, Status> {
    if value.is_empty() { Ok(None) } else { uuid(field, value).map(Some) }
}

/// A timestamp field, as parsed by `bank_proto::convert::instant` (`None`: not a valid time).
///
/// # Errors
/// `OUT_OF_RANGE` for an invalid time.
pub fn time(field: &str, parsed: Option<OffsetDateTime>) -> Result<OffsetDateTime, Status> {
    parsed.ok_or_else(|| invalid(field, "OUT_OF_RANGE", "not a valid time"))
}

/// The required idempotency key of a call, scoped to `principal` and `rpc`.
///
/// # Errors
/// `IDEMPOTENCY_KEY_REQUIRED` when missing; `VALIDATION_FAILED` when malformed.
pub fn required_key<T>(
    request: &Request<T>,
    principal: &str,
    rpc: &'static str,
) -> Result<idempotency::Key, Status> {
    idempotency::key_of(request.metadata(), principal, rpc, true)?
        .ok_or_else(|| refused(ErrorCode::IdempotencyKeyRequired, "an idempotency key is required"))
}

/// The idempotency key of a call that honours one when sent.
///
/// # Errors
/// `VALIDATION_FAILED` when malformed.
pub fn optional_key<T>(
    request: &Request<T>,
    principal: &str,
    rpc: &'static str,
) -> Result<Option<idempotency::Key>, Status> {
    Ok(idempotency::key_of(request.metadata(), principal, rpc, false)?)
}

/// A response, marked (`idempotent-replay: true`) when it replays a stored one.
pub fn answer<T>(message: T, replayed: bool) -> Response<T> {
    let mut response = Response::new(message);
    if replayed {
        response
            .metadata_mut()
            .insert(idempotency::REPLAYED, tonic::metadata::MetadataValue::from_static("true"));
    }
    response
}

/// A stored (encoded) response, decoded and marked as a replay.
///
/// # Errors
/// The stored bytes do not decode (internal).
pub fn replayed<T: prost::Message + Default>(encoded: &[u8]) -> Result<Response<T>, Status> {
    Ok(answer(T::decode(encoded).map_err(internal)?, true))
}

/// Which fields an update changes (AIP-134): exactly the paths of its `update_mask` when it names
/// any, else every field the request sets to a non-default value. So an update that leaves a
/// field out never changes it — an unsent `bool` is not "false".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateMask(Option<Vec<String>>);

impl UpdateMask {
    /// The mask of a request: `paths` (its `update_mask.paths`, empty when unset), each of which
    /// must be one of `allowed`.
    ///
    /// # Errors
    /// `VALIDATION_FAILED`, violation `UNKNOWN_FIELD` on `update_mask`, naming the path.
    pub fn new(paths: &[String], allowed: &[&str]) -> Result<Self, Status> {
        if paths.is_empty() {
            return Ok(Self(None));
        }
        if let Some(unknown) = paths.iter().find(|p| !allowed.contains(&p.as_str())) {
            return Err(invalid(
                "update_mask",
                "UNKNOWN_FIELD",
                &format!("`{unknown}` cannot be updated; the fields are: {}", allowed.join(", ")),
            ));
        }
        Ok(Self(Some(paths.to_vec())))
    }

    /// Whether the update changes `path`; `populated` says whether the request set it to a
    /// non-default value (what counts without a mask).
    #[must_use]
    pub fn covers(&self, path: &str, populated: bool) -> bool {
        self.0.as_ref().map_or(populated, |paths| paths.iter().any(|p| p == path))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tonic_types::StatusExt as _;

    use super::*;
    use crate::error::reason_of;

    fn violation(status: &Status) -> String {
        status.get_details_bad_request().unwrap().field_violations[0].description.clone()
    }

    #[test]
    fn uuid_fields_say_required_or_invalid_format() {
        assert_eq!(violation(&uuid("account_id", "").unwrap_err()), "REQUIRED: is required");
        assert_eq!(violation(&uuid("account_id", "x").unwrap_err()), "INVALID_FORMAT: must be a UUID");
        assert_eq!(optional_uuid("f", "").unwrap(), None);
        let id = Uuid::now_v7();
        assert_eq!(optional_uuid("f", &id.to_string()).unwrap(), Some(id));
        assert_eq!(reason_of(&time("as_of", None).unwrap_err()), Some(ErrorCode::ValidationFailed));
    }

    #[test]
    fn keys_are_required_or_optional_and_replays_are_marked() {
        let request = Request::new(());
        let err = required_key(&request, "u", "/x/Y").unwrap_err();
        assert_eq!(reason_of(&err), Some(ErrorCode::IdempotencyKeyRequired));
        assert_eq!(optional_key(&request, "u", "/x/Y").unwrap(), None);
        let replay: Response<()> = answer((), true);
        assert_eq!(replay.metadata().get(idempotency::REPLAYED).unwrap(), "true");
        assert!(answer((), false).metadata().get(idempotency::REPLAYED).is_none());
    }

    #[test]
    fn a_mask_names_the_fields_and_without_one_the_set_fields_count() {
        let implied = UpdateMask::new(&[], &["url", "enabled"]).unwrap();
        assert!(implied.covers("url", true));
        assert!(!implied.covers("enabled", false), "an unsent false changes nothing");
        let explicit = UpdateMask::new(&["enabled".to_owned()], &["url", "enabled"]).unwrap();
        assert!(explicit.covers("enabled", false), "a masked false is a change");
        assert!(!explicit.covers("url", true), "a set field outside the mask is left alone");
        let err = UpdateMask::new(&["secret".to_owned()], &["url", "enabled"]).unwrap_err();
        assert!(violation(&err).starts_with("UNKNOWN_FIELD: `secret`"), "{}", violation(&err));
    }
}
