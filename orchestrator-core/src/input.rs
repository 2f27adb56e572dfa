//! Values clients send, as types that can only hold valid ones.
//!
//! Each type is built by a constructor that checks its rule (`parse` or
//! `new`, also `TryFrom` and validating `Deserialize`) and fails with an
//! [`Invalid`] naming the wire field. Once built, a value needs no further
//! checks: the HTTP layer, the engine and every store take it as it is.
//! [`PhoneNumber`](crate::PhoneNumber) follows the same pattern in its own module.

use std::fmt;
use std::io;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::validate::{check_text, Invalid};

/// Identifier of the call script / flow at the provider, e.g. `"welcomeFlow"`.
///
/// Not blank, at most [`ScriptId::MAX_CHARS`] characters, no control
/// characters. Kept exactly as given (no trimming). Serialises as a JSON string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ScriptId(String);

impl ScriptId {
    /// The wire name of the field.
    pub const FIELD: &'static str = "scriptId";
    /// Longest script id, in characters (Unicode scalar values).
    pub const MAX_CHARS: usize = 256;

    /// Checks `raw` and keeps it as it is.
    ///
    /// # Errors
    /// [`Invalid`] naming `scriptId` when `raw` is empty or only white space,
    /// longer than [`ScriptId::MAX_CHARS`] characters, or holds a control character.
    pub fn parse(raw: impl Into<String>) -> Result<Self, Invalid> {
        let raw = raw.into();
        check_text(Self::FIELD, &raw, Self::MAX_CHARS)?;
        Ok(Self(raw))
    }

    /// The script id as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The script id as an owned string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ScriptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ScriptId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ScriptId {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl TryFrom<&str> for ScriptId {
    type Error = Invalid;
    fn try_from(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl std::str::FromStr for ScriptId {
    type Err = Invalid;
    fn from_str(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl PartialEq<str> for ScriptId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ScriptId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'de> Deserialize<'de> for ScriptId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(raw).map_err(|invalid| serde::de::Error::custom(invalid.message))
    }
}

/// Free-form JSON passed through to the provider untouched, e.g. `{"name": "Sara"}`.
///
/// Always a JSON object, at most [`Metadata::MAX_BYTES`] bytes when written as
/// compact JSON (`serde_json::to_string`), and nested at most
/// [`Metadata::MAX_DEPTH`] levels deep (the object itself is level 1). The
/// bounds keep one call's row, and every dial request carrying it, small.
/// Serialises as the object itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Metadata(Value);

impl Metadata {
    /// The wire name of the field.
    pub const FIELD: &'static str = "metadata";
    /// Largest metadata, in bytes of compact JSON (16 KiB).
    pub const MAX_BYTES: usize = 16 * 1024;
    /// Deepest nesting of objects and arrays, the outer object counted as 1.
    pub const MAX_DEPTH: usize = 32;

    /// Checks `value` and keeps it as it is.
    ///
    /// # Errors
    /// [`Invalid`] naming `metadata` when `value` is not a JSON object, nests
    /// deeper than [`Metadata::MAX_DEPTH`], or is larger than [`Metadata::MAX_BYTES`].
    pub fn new(value: Value) -> Result<Self, Invalid> {
        if !value.is_object() {
            return Err(Invalid::new(
                Self::FIELD,
                format!("must be a JSON object, not {}", json_type(&value)),
            ));
        }
        // Depth first, without recursion: a value built in code has not met
        // serde_json's nesting limit, and the size check below recurses.
        if depth_exceeds(&value, Self::MAX_DEPTH) {
            return Err(Invalid::new(
                Self::FIELD,
                format!("must nest at most {} levels deep", Self::MAX_DEPTH),
            ));
        }
        if compact_len_exceeds(&value, Self::MAX_BYTES) {
            return Err(Invalid::new(
                Self::FIELD,
                format!("must be at most {} bytes of JSON", Self::MAX_BYTES),
            ));
        }
        Ok(Self(value))
    }

    /// Parses compact or pretty JSON text, then checks it as [`Metadata::new`] does.
    ///
    /// # Errors
    /// [`Invalid`] naming `metadata` when `text` is not JSON or breaks a rule of [`Metadata::new`].
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let value = serde_json::from_str(text)
            .map_err(|error| Invalid::new(Self::FIELD, format!("is not JSON: {error}")))?;
        Self::new(value)
    }

    /// The JSON value (always an object).
    #[must_use]
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// The JSON value (always an object), owned.
    #[must_use]
    pub fn into_value(self) -> Value {
        self.0
    }
}

impl fmt::Display for Metadata {
    /// Compact JSON, as stored and sent to the provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<Value> for Metadata {
    type Error = Invalid;
    fn try_from(value: Value) -> Result<Self, Invalid> {
        Self::new(value)
    }
}

impl From<Metadata> for Value {
    fn from(metadata: Metadata) -> Self {
        metadata.0
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::new(value).map_err(|invalid| serde::de::Error::custom(invalid.message))
    }
}

/// The name of a JSON value's type, for messages ("a number", "an array").
#[must_use]
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether arrays and objects in `value` nest deeper than `limit` (`value` itself is level 1).
fn depth_exceeds(value: &Value, limit: usize) -> bool {
    let mut pending = vec![(value, 1_usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// Whether `value` written as compact JSON is longer than `limit` bytes;
/// stops writing as soon as it is.
fn compact_len_exceeds(value: &Value, limit: usize) -> bool {
    struct Counter {
        written: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.written += bytes.len();
            if self.written > self.limit {
                // Any error stops the serialiser; its kind does not matter here.
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { written: 0, limit };
    serde_json::to_writer(&mut counter, value).is_err()
}

/// A client-chosen key that makes creating a call idempotent: a repeat with
/// the same key returns the first call. Sent in the `Idempotency-Key` header.
///
/// 1 to [`IdempotencyKey::MAX_LEN`] visible ASCII characters (`!` to `~`):
/// no spaces, tabs or other control characters, and nothing outside ASCII, so
/// characters and bytes count the same. Quotes are ordinary characters: a
/// structured-field string `"abc"` is the five-character key `"abc"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The wire name of the field (an HTTP header).
    pub const FIELD: &'static str = "Idempotency-Key";
    /// Longest key, in characters (which are bytes: keys are ASCII).
    pub const MAX_LEN: usize = 255;

    /// Checks `raw` and keeps it as it is.
    ///
    /// # Errors
    /// [`Invalid`] naming `Idempotency-Key` when `raw` is empty, longer than
    /// [`IdempotencyKey::MAX_LEN`], or holds anything but visible ASCII.
    pub fn parse(raw: impl Into<String>) -> Result<Self, Invalid> {
        let raw = raw.into();
        let visible = |byte: &u8| byte.is_ascii_graphic();
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.as_bytes().iter().all(visible) {
            return Err(Invalid::new(
                Self::FIELD,
                format!(
                    "must be 1 to {} visible ASCII characters, without spaces",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Self(raw))
    }

    /// The key as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = Invalid;
    fn try_from(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = Invalid;
    fn from_str(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(raw).map_err(|invalid| serde::de::Error::custom(invalid.message))
    }
}

/// Where a call's terminal event is POSTed: an absolute `http` or `https`
/// URL, at most [`CallbackUrl::MAX_LEN`] bytes, with a host and without
/// credentials (`user:password@`), which would end up in logs. Kept as
/// given. Serialises as a JSON string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CallbackUrl(String);

impl CallbackUrl {
    /// The wire name of the field.
    pub const FIELD: &'static str = "callbackUrl";
    /// Longest URL, in bytes (what browsers and proxies reliably carry).
    pub const MAX_LEN: usize = 2048;

    /// Checks `raw` and keeps it as it is.
    ///
    /// # Errors
    /// [`Invalid`] naming `callbackUrl` when `raw` is longer than
    /// [`CallbackUrl::MAX_LEN`], is not an absolute URL (WHATWG URL
    /// Standard, via the `url` crate), is not `http` or `https`, has no host,
    /// or carries credentials.
    pub fn parse(raw: impl Into<String>) -> Result<Self, Invalid> {
        let raw = raw.into();
        if raw.len() > Self::MAX_LEN {
            return Err(Invalid::new(
                Self::FIELD,
                format!("must be at most {} bytes", Self::MAX_LEN),
            ));
        }
        let parsed = url::Url::parse(&raw)
            .map_err(|error| Invalid::new(Self::FIELD, format!("is not a URL: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Invalid::new(Self::FIELD, "must be an http or https URL"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Invalid::new(Self::FIELD, "must name a host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Invalid::new(Self::FIELD, "must not carry credentials"));
        }
        Ok(Self(raw))
    }

    /// The URL as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CallbackUrl {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl std::str::FromStr for CallbackUrl {
    type Err = Invalid;
    fn from_str(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

impl<'de> Deserialize<'de> for CallbackUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(raw).map_err(|invalid| serde::de::Error::custom(invalid.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of<T: fmt::Debug>(result: Result<T, Invalid>) -> &'static str {
        result.expect_err("invalid").field
    }

    #[test]
    fn script_ids_are_kept_as_given_within_their_bounds() {
        let id = ScriptId::parse(" welcome Flow ").expect("valid");
        assert_eq!(id.as_str(), " welcome Flow ");
        let longest = "é".repeat(ScriptId::MAX_CHARS);
        assert_eq!(
            ScriptId::parse(longest.as_str())
                .expect("256 chars")
                .as_str(),
            longest
        );
        let too_long = "x".repeat(ScriptId::MAX_CHARS + 1);
        for bad in ["", "   ", "a\u{7}b", "line\nbreak", too_long.as_str()] {
            assert_eq!(field_of(ScriptId::parse(bad)), "scriptId", "{bad:?}");
        }
    }

    #[test]
    fn script_ids_serialise_as_strings_and_deserialise_with_the_rule() {
        let id: ScriptId = serde_json::from_value(json!("welcomeFlow")).expect("valid");
        assert_eq!(
            serde_json::to_value(&id).expect("serialise"),
            json!("welcomeFlow")
        );
        let error = serde_json::from_value::<ScriptId>(json!("  ")).expect_err("blank");
        assert_eq!(error.to_string(), "must not be empty");
        assert!(serde_json::from_value::<ScriptId>(json!(5)).is_err());
    }

    #[test]
    fn metadata_is_an_object() {
        assert!(Metadata::new(json!({})).is_ok());
        for bad in [json!([1]), json!("x"), json!(1), json!(null), json!(true)] {
            let invalid = Metadata::new(bad.clone()).expect_err("not an object");
            assert_eq!(invalid.field, "metadata");
            assert!(
                invalid.message.starts_with("must be a JSON object"),
                "{bad}"
            );
        }
    }

    #[test]
    fn metadata_size_is_counted_in_bytes_of_compact_json() {
        // `{"k":"…"}` is 8 bytes around the string.
        let fits = json!({ "k": "é".repeat((Metadata::MAX_BYTES - 8) / 2) });
        assert_eq!(fits.to_string().len(), Metadata::MAX_BYTES);
        assert!(Metadata::new(fits).is_ok());
        let over = json!({ "k": "x".repeat(Metadata::MAX_BYTES - 7) });
        assert_eq!(over.to_string().len(), Metadata::MAX_BYTES + 1);
        assert_eq!(field_of(Metadata::new(over)), "metadata");
    }

    #[test]
    fn metadata_nesting_is_bounded() {
        let nested = |levels: usize| (1..levels).fold(json!({}), |inner, _| json!({ "k": inner }));
        assert!(Metadata::new(nested(Metadata::MAX_DEPTH)).is_ok());
        assert_eq!(
            field_of(Metadata::new(nested(Metadata::MAX_DEPTH + 1))),
            "metadata"
        );
        // Arrays count as levels too.
        let arrays = (2..=Metadata::MAX_DEPTH).fold(json!([]), |inner, _| json!([inner]));
        assert!(Metadata::new(json!({ "a": arrays.clone() })).is_err());
        assert!(Metadata::new(json!({ "a": arrays[0].clone() })).is_ok());
    }

    #[test]
    fn metadata_deeper_than_serde_json_parses_is_refused() {
        // Built in code, so serde_json's parse limit of 128 levels never applied.
        let deep = (0..200).fold(json!({}), |inner, _| json!({ "k": inner }));
        assert_eq!(field_of(Metadata::new(deep)), "metadata");
    }

    #[test]
    fn metadata_round_trips_through_serde_and_text() {
        let metadata: Metadata =
            serde_json::from_value(json!({"name": "Sara", "n": [1, 2]})).expect("valid");
        assert_eq!(metadata.to_string(), r#"{"n":[1,2],"name":"Sara"}"#);
        assert_eq!(Metadata::parse(&metadata.to_string()), Ok(metadata.clone()));
        assert_eq!(
            serde_json::to_value(&metadata).expect("serialise"),
            *metadata.as_value()
        );
        assert!(serde_json::from_value::<Metadata>(json!([1])).is_err());
        assert_eq!(field_of(Metadata::parse("{")), "metadata");
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_counted_one_way() {
        for good in [
            "order-42",
            "\"quoted\"",
            "k",
            &"k".repeat(IdempotencyKey::MAX_LEN),
        ] {
            assert_eq!(IdempotencyKey::parse(good).expect("valid").as_str(), good);
        }
        let too_long = "k".repeat(IdempotencyKey::MAX_LEN + 1);
        for bad in [
            "",
            " ",
            "a b",
            "a\tb",
            "tab\t",
            "a\u{7f}",
            "é",
            "\u{0}",
            too_long.as_str(),
        ] {
            assert_eq!(
                field_of(IdempotencyKey::parse(bad)),
                "Idempotency-Key",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn idempotency_keys_deserialise_with_the_rule() {
        let key: IdempotencyKey = serde_json::from_value(json!("order-42")).expect("valid");
        assert_eq!(
            serde_json::to_value(&key).expect("serialise"),
            json!("order-42")
        );
        assert!(serde_json::from_value::<IdempotencyKey>(json!("a b")).is_err());
    }
}
