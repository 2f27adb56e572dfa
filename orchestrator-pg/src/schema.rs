//! The PostgreSQL schema a store lives in, and everything keyed by it.
//!
//! A store's tables, functions and migrations table (`_sqlx_migrations`) are
//! in one schema, `public` unless configured otherwise. Two stores in two
//! schemas of one database share nothing: besides the tables, the two
//! things PostgreSQL keys per database rather than per schema are keyed by
//! the schema's name here:
//! - the notification channel the stores' wake-up tasks notify
//!   (`orchestrator_calls` in `public`, `orchestrator_calls.<schema>`
//!   elsewhere), and the one the event
//!   sequencer notifies (`orchestrator_event`, `orchestrator_event.<schema>`);
//! - the advisory locks of the claim, of the counter compaction and of the
//!   event sequencer.
//!
//! In `public` both keep the names and keys they had before schemas could be
//! chosen, so processes of an older version sharing the database keep
//! taking the same locks and hearing the same notifications during a rolling
//! upgrade.

use std::fmt;
use std::str::FromStr;

/// The name of the schema a store lives in: 1 to [`SchemaName::MAX_LEN`]
/// bytes of lowercase ASCII letters, digits and `_`, starting with a letter
/// or `_`, and not starting with `pg_` (reserved by PostgreSQL).
///
/// Lowercase only, so the name means the same quoted or not, in SQL, in
/// `search_path` and in a notification channel. At most 44 bytes, so the
/// channels `orchestrator_calls.<name>` and `orchestrator_event.<name>` fit
/// PostgreSQL's 63-byte limit on identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

/// Why a string is not a [`SchemaName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema name {name:?}: {reason}")]
pub struct InvalidSchemaName {
    name: String,
    reason: &'static str,
}

impl SchemaName {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 44;

    /// The schema of a store not told otherwise.
    pub const DEFAULT: &'static str = "public";

    /// Parses `name`.
    ///
    /// # Errors
    /// [`InvalidSchemaName`] saying which rule `name` breaks.
    pub fn new(name: &str) -> Result<Self, InvalidSchemaName> {
        let invalid = |reason| {
            Err(InvalidSchemaName {
                name: name.to_owned(),
                reason,
            })
        };
        let Some(first) = name.bytes().next() else {
            return invalid("it is empty");
        };
        if name.len() > Self::MAX_LEN {
            return invalid("it is longer than 44 bytes");
        }
        if !(first.is_ascii_lowercase() || first == b'_') {
            return invalid("it must start with a lowercase letter or '_'");
        }
        if !name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        {
            return invalid("it may hold only lowercase ASCII letters, digits and '_'");
        }
        if name.starts_with("pg_") {
            return invalid("names starting with 'pg_' are reserved by PostgreSQL");
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `public`, where the pre-schema channel and lock keys
    /// stay in use.
    fn is_public(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// The name as a quoted SQL identifier. The name holds no `"`, so no
    /// escaping is needed; quoting keeps keywords (`user`) usable.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl FromStr for SchemaName {
    type Err = InvalidSchemaName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first key of the advisory locks in `public` (the pre-schema keys:
/// `(1869771365, 1)` serialises claimers, `(1869771365, 2)` guards the
/// counter compaction; `(1869771365, 3)`, newer, serialises the event
/// sequencers).
const PUBLIC_CLASS: i32 = 1_869_771_365;
/// The first keys of the claim and compaction locks in any other schema;
/// the second key is a hash of the schema's name. Distinct from
/// [`PUBLIC_CLASS`], so no other schema ever shares `public`'s locks.
const CLAIM_CLASS: i32 = 1_869_771_366;
const COMPACT_CLASS: i32 = 1_869_771_367;
const SEQUENCE_CLASS: i32 = 1_869_771_368;

/// A two-key advisory lock, as `pg_advisory_xact_lock(integer, integer)` takes it.
pub(crate) type LockKey = (i32, i32);

/// A store's schema and the database-wide names derived from it.
#[derive(Clone, Debug)]
pub(crate) struct Namespace {
    pub(crate) schema: SchemaName,
    /// The channel the wake-up tasks of this schema's stores notify.
    pub(crate) channel: String,
    /// The channel the event sequencer notifies once per pass that made
    /// events readable.
    pub(crate) events_channel: String,
    /// Taken by every claim in this schema.
    pub(crate) claim_lock: LockKey,
    /// Guards the folding of this schema's counters.
    pub(crate) compact_lock: LockKey,
    /// Held by the one sequencer pass running in this schema.
    pub(crate) sequence_lock: LockKey,
}

impl Namespace {
    pub(crate) fn new(schema: SchemaName) -> Self {
        if schema.is_public() {
            return Self {
                schema,
                channel: "orchestrator_calls".to_owned(),
                events_channel: "orchestrator_event".to_owned(),
                claim_lock: (PUBLIC_CLASS, 1),
                compact_lock: (PUBLIC_CLASS, 2),
                sequence_lock: (PUBLIC_CLASS, 3),
            };
        }
        // Two schemas whose names hash alike share their locks: their claims
        // then take turns (slower, still correct, each cap counted in its own
        // schema) and one may skip a compaction now and then.
        let key = fnv1a(schema.as_str());
        Self {
            channel: format!("orchestrator_calls.{schema}"),
            events_channel: format!("orchestrator_event.{schema}"),
            claim_lock: (CLAIM_CLASS, key),
            compact_lock: (COMPACT_CLASS, key),
            sequence_lock: (SEQUENCE_CLASS, key),
            schema,
        }
    }
}

/// 32-bit FNV-1a of `name`, as an `integer` key. Fixed forever: every
/// process sharing a database must derive the same keys.
fn fnv1a(name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_identifiers() {
        for name in [
            "orchestrator",
            "_calls",
            "app2_calls",
            "user",
            &"a".repeat(44),
        ] {
            assert_eq!(SchemaName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_names_that_would_need_quoting_or_are_reserved() {
        for name in [
            "",
            "Orchestrator",
            "2calls",
            "my schema",
            "a\"b",
            "a-b",
            "é",
            "pg_calls",
            &"a".repeat(45),
        ] {
            assert!(SchemaName::new(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn the_error_names_the_rule_broken() {
        let error = SchemaName::new("Calls").unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid schema name \"Calls\": it must start with a lowercase letter or '_'"
        );
    }

    #[test]
    fn public_keeps_the_pre_schema_channel_and_locks() {
        let public = Namespace::new(SchemaName::default());
        assert_eq!(public.channel, "orchestrator_calls");
        assert_eq!(public.claim_lock, (1_869_771_365, 1));
        assert_eq!(public.compact_lock, (1_869_771_365, 2));
        assert_eq!(public.events_channel, "orchestrator_event");
        assert_eq!(public.sequence_lock, (1_869_771_365, 3));
    }

    #[test]
    fn other_schemas_get_their_own_channel_and_locks() {
        let a = Namespace::new(SchemaName::new("tenant_a").unwrap());
        let b = Namespace::new(SchemaName::new("tenant_b").unwrap());
        assert_eq!(a.channel, "orchestrator_calls.tenant_a");
        assert_ne!(a.claim_lock, b.claim_lock);
        assert_ne!(a.compact_lock, b.compact_lock);
        assert_ne!(a.claim_lock, a.compact_lock);
        assert_eq!(a.events_channel, "orchestrator_event.tenant_a");
        assert_ne!(a.sequence_lock, b.sequence_lock);
        assert_ne!(a.sequence_lock, a.claim_lock);
        assert_ne!(a.sequence_lock, a.compact_lock);
        let longest = Namespace::new(SchemaName::new(&"a".repeat(44)).unwrap());
        assert_eq!(longest.channel.len(), 63, "fits NAMEDATALEN - 1");
        assert_eq!(longest.events_channel.len(), 63, "fits NAMEDATALEN - 1");
    }

    #[test]
    fn lock_keys_are_stable_across_versions() {
        // Processes of different versions sharing a database must agree.
        assert_eq!(fnv1a(""), i32::from_ne_bytes(0x811c_9dc5_u32.to_ne_bytes()));
        assert_eq!(
            fnv1a("a"),
            i32::from_ne_bytes(0xe40c_292c_u32.to_ne_bytes())
        );
    }
}
