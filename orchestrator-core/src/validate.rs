//! Input rules for new calls and payload updates, shared by every front end.

use chrono::{DateTime, Utc};

use crate::call::{NewCall, PayloadPatch};

/// Longest `scriptId`, in characters.
pub const MAX_SCRIPT_ID_CHARS: usize = 256;
/// Largest `metadata`, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest provider call id we accept, in characters.
pub const MAX_PROVIDER_CALL_ID_CHARS: usize = 512;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// An input value is invalid. `field` is the wire (camelCase) name of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct Invalid {
    /// The field at fault, e.g. `"scriptId"`.
    pub field: &'static str,
    /// What is wrong, e.g. `"must not be empty"`.
    pub message: String,
}

impl Invalid {
    /// An error for `field`.
    #[must_use]
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

fn check_script_id(script_id: &str) -> Result<(), Invalid> {
    if script_id.trim().is_empty() {
        return Err(Invalid::new("scriptId", "must not be empty"));
    }
    if script_id.chars().count() > MAX_SCRIPT_ID_CHARS {
        return Err(Invalid::new(
            "scriptId",
            format!("must be at most {MAX_SCRIPT_ID_CHARS} characters"),
        ));
    }
    if script_id.chars().any(char::is_control) {
        return Err(Invalid::new(
            "scriptId",
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_metadata(metadata: Option<&serde_json::Value>) -> Result<(), Invalid> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    if !metadata.is_object() {
        return Err(Invalid::new("metadata", "must be a JSON object"));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(Invalid::new(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// Checks a new call at `now`.
///
/// # Errors
/// [`Invalid`] for an empty or over-long `scriptId`, `metadata` that is not an
/// object or too large, an `expiresAt` not after `now` or not after
/// `notBefore`, or an over-long idempotency key.
pub fn validate_new_call(new: &NewCall, now: DateTime<Utc>) -> Result<(), Invalid> {
    check_script_id(&new.payload.script_id)?;
    check_metadata(new.payload.metadata.as_ref())?;
    if let Some(expires_at) = new.expires_at {
        if expires_at <= now {
            return Err(Invalid::new("expiresAt", "must be in the future"));
        }
        if new
            .not_before
            .is_some_and(|not_before| expires_at <= not_before)
        {
            return Err(Invalid::new("expiresAt", "must be after notBefore"));
        }
    }
    if let Some(key) = &new.idempotency_key {
        if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(Invalid::new(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks a payload update.
///
/// # Errors
/// [`Invalid`] as for [`validate_new_call`], field by field.
pub fn validate_patch(patch: &PayloadPatch) -> Result<(), Invalid> {
    if let Some(script_id) = &patch.script_id {
        check_script_id(script_id)?;
    }
    check_metadata(patch.metadata.as_ref())
}

/// Checks a provider call id (from a dial's answer or a webhook): 1 to
/// [`MAX_PROVIDER_CALL_ID_CHARS`] characters, no control characters (which
/// PostgreSQL text cannot hold, and which no provider uses).
///
/// # Errors
/// [`Invalid`] naming `callId`.
pub fn validate_provider_call_id(id: &str) -> Result<(), Invalid> {
    if id.trim().is_empty() {
        return Err(Invalid::new("callId", "must not be empty"));
    }
    if id.chars().count() > MAX_PROVIDER_CALL_ID_CHARS {
        return Err(Invalid::new(
            "callId",
            format!("must be at most {MAX_PROVIDER_CALL_ID_CHARS} characters"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Invalid::new(
            "callId",
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_call_ids_are_bounded_printable_text() {
        assert!(validate_provider_call_id("CA1234-abc").is_ok());
        for bad in ["", "  ", "a\u{0}b", "line\nbreak"] {
            assert_eq!(
                validate_provider_call_id(bad).map_err(|e| e.field),
                Err("callId")
            );
        }
        let long = "x".repeat(MAX_PROVIDER_CALL_ID_CHARS + 1);
        assert!(validate_provider_call_id(&long).is_err());
    }
}
