//! The input rules that are not a single value's: an [`Invalid`] names the
//! wire field at fault. Single values (script ids, metadata, idempotency
//! keys, phone numbers) are types that check their own rule when built; see
//! [`crate::input`] and [`crate::phone`].

use chrono::{DateTime, Utc};

use crate::call::{Call, CallPatch, NewCall};

/// Longest provider call id we accept, in characters.
pub const MAX_PROVIDER_CALL_ID_CHARS: usize = 512;

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

/// Checks the rule between a new call's fields at `now`: `expiresAt`, when
/// given, is after `now` and after `notBefore`. Each field on its own is valid
/// by its type.
///
/// # Errors
/// [`Invalid`] naming `expiresAt`.
pub fn validate_new_call(new: &NewCall, now: DateTime<Utc>) -> Result<(), Invalid> {
    match new.expires_at {
        Some(expires_at) => check_expiry(expires_at, new.not_before, now),
        None => Ok(()),
    }
}

/// The rule on a given `expiresAt`: after `now` and after `notBefore`.
fn check_expiry(
    expires_at: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), Invalid> {
    if expires_at <= now {
        return Err(Invalid::new("expiresAt", "must be in the future"));
    }
    if not_before.is_some_and(|not_before| expires_at <= not_before) {
        return Err(Invalid::new("expiresAt", "must be after notBefore"));
    }
    Ok(())
}

/// Checks a rescheduled call, `next` (the call with `patch` applied), at
/// `now` by the rule of [`validate_new_call`]: a new `expiresAt` is in the
/// future, and `expiresAt` stays after `notBefore`. A patch that leaves the
/// schedule alone passes.
///
/// # Errors
/// [`Invalid`] naming `expiresAt` when the patch set it, else `notBefore`.
pub fn validate_schedule(
    next: &Call,
    patch: &CallPatch,
    now: DateTime<Utc>,
) -> Result<(), Invalid> {
    let Some(expires_at) = next.expires_at else {
        return Ok(());
    };
    if patch.expires_at.is_some() {
        check_expiry(expires_at, next.not_before, now)?;
    } else if patch.not_before.is_some()
        && next
            .not_before
            .is_some_and(|not_before| expires_at <= not_before)
    {
        return Err(Invalid::new("notBefore", "must be before expiresAt"));
    }
    Ok(())
}

/// Checks a provider call id (from a dial's answer or a webhook): 1 to
/// [`MAX_PROVIDER_CALL_ID_CHARS`] characters, no control characters (which
/// PostgreSQL text cannot hold, and which no provider uses).
///
/// # Errors
/// [`Invalid`] naming `callId`.
pub fn validate_provider_call_id(id: &str) -> Result<(), Invalid> {
    check_text("callId", id, MAX_PROVIDER_CALL_ID_CHARS)
}

/// The rule of a free-text value (a script id, a provider call id, a cancel
/// reason): not blank, at most `max_chars` characters (Unicode scalar
/// values), no control characters.
pub(crate) fn check_text(field: &'static str, raw: &str, max_chars: usize) -> Result<(), Invalid> {
    if raw.trim().is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if raw.chars().count() > max_chars {
        return Err(Invalid::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::NewCall;
    use crate::input::ScriptId;
    use crate::phone::PhoneNumber;
    use chrono::TimeDelta;

    #[test]
    fn expires_at_must_follow_now_and_not_before() {
        let now = Utc::now();
        let schedule = |not_before: Option<DateTime<Utc>>, expires_at: Option<DateTime<Utc>>| {
            let mut new = NewCall::new(
                PhoneNumber::parse("+966501234567").expect("valid"),
                ScriptId::parse("s").expect("valid"),
            );
            new.not_before = not_before;
            new.expires_at = expires_at;
            validate_new_call(&new, now).map_err(|invalid| invalid.field)
        };
        let later = now + TimeDelta::hours(1);
        assert_eq!(schedule(None, None), Ok(()));
        assert_eq!(schedule(Some(now), Some(later)), Ok(()));
        assert_eq!(schedule(None, Some(now)), Err("expiresAt"));
        assert_eq!(schedule(Some(later), Some(later)), Err("expiresAt"));
        assert_eq!(
            schedule(Some(later + TimeDelta::seconds(1)), Some(later)),
            Err("expiresAt")
        );
    }

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
