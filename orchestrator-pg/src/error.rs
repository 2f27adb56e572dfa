//! The one path from a PostgreSQL failure to a [`StoreError`].
//!
//! Every query function returns [`PgError`]; the store's `Store` methods turn
//! it into a [`StoreError`] with `?`, through the single
//! `impl From<PgError> for StoreError` below. Classification uses sqlx's error
//! variants and SQLSTATE codes, never message text.
//!
//! Each cause is printed once. sqlx's own messages end with their source's
//! message (`"error communicating with database: Connection refused"`, then
//! the `io::Error` again as the source), so a chain holding a `sqlx::Error`
//! would print its root cause twice. [`SqlxError`] shows such an error as a
//! short phrase of its own followed by sqlx's source, and every variant here
//! keeps its cause in `source()` only, never in its message.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::call::CallId;
use orchestrator_core::state::TransitionError;
use orchestrator_core::StoreError;
use sqlx::migrate::MigrateError;

use crate::schema::{InvalidSchemaName, SchemaName};

/// A failure inside this crate, before it becomes a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// No call has this id.
    #[error("call {0} not found")]
    NotFound(CallId),
    /// The state machine refused the change for the call's current status.
    #[error("the change to call {id} was refused")]
    Conflict {
        /// The call.
        id: CallId,
        /// The refused transition.
        #[source]
        source: TransitionError,
    },
    /// The change, merged with the call as it is, breaks a rule between
    /// fields.
    #[error("the change is invalid")]
    Invalid(#[source] orchestrator_core::validate::Invalid),
    /// The database URL could not be parsed. sqlx's URL errors never quote
    /// the URL, so no password reaches the message.
    #[error("invalid database URL")]
    Url(#[source] Box<dyn Error + Send + Sync>),
    /// No connection could be opened to the server at `target` (see
    /// [`crate::connect::target`]: host and port or socket path, never
    /// credentials).
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// Where we tried to connect.
        target: String,
        /// Why it failed.
        #[source]
        source: SqlxError,
    },
    /// A statement failed.
    #[error(transparent)]
    Query(#[from] SqlxError),
    /// One migration failed to apply (its transaction was rolled back).
    #[error("migration {version} failed")]
    Migration {
        /// The migration's version, its file name prefix.
        version: i64,
        /// The failing statement's error.
        #[source]
        source: SqlxError,
    },
    /// The embedded migrations could not be resolved.
    #[error("cannot read the migrations")]
    MigrationSource(#[source] Box<dyn Error + Send + Sync>),
    /// The applied migrations disagree with the embedded ones (one is
    /// missing, modified or newer). sqlx's messages for these carry no
    /// source, so they are shown as they are.
    #[error(transparent)]
    Migrations(MigrateError),
    /// Stored data breaks an invariant of ours (e.g. a row that cannot be a
    /// [`orchestrator_core::Call`]): something else wrote to the database.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The server did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    /// Unqualified names resolve to another schema than the store's: its
    /// tables would be read and written somewhere else than configured.
    #[error(
        "unqualified names resolve to schema {found:?}, not to the store's schema \
         {expected:?}: configure the store's schema as {found:?}, or change the \
         role's search_path"
    )]
    OtherSchema {
        /// The store's schema.
        expected: SchemaName,
        /// What `current_schema()` answered.
        found: String,
    },
    /// The schema of a pool handed to the store cannot be a store's schema.
    #[error("the pool's schema cannot hold a store")]
    PoolSchema(#[source] InvalidSchemaName),
    /// No schema of the pool's `search_path` exists.
    #[error("no schema of the pool's search_path exists")]
    NoSchema,
    /// The transaction of a batch of writes failed (see `crate::batch`):
    /// every write of the batch gets its error.
    #[error(transparent)]
    Batch(Arc<PgError>),
    /// The store's background task that runs this kind of write has stopped
    /// (the store is being dropped).
    #[error("the store is shutting down")]
    Stopped,
}

impl PgError {
    /// A failure to open a connection to `target`.
    pub(crate) fn connect(target: String, error: sqlx::Error) -> Self {
        PgError::Connect {
            target,
            source: SqlxError(error),
        }
    }

    /// A failure to parse a database URL. sqlx reports every such failure as
    /// a configuration error; its inner error is the one worth showing.
    pub(crate) fn url(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Configuration(source) => PgError::Url(source),
            other => PgError::Query(SqlxError(other)),
        }
    }

    /// Whether the server refused a connection because the database does
    /// not exist (3D000) or the role may not connect to it (42501).
    pub(crate) fn is_missing_or_forbidden_database(&self) -> bool {
        match self {
            PgError::Connect {
                source: SqlxError(sqlx::Error::Database(db)),
                ..
            } => matches!(db.code().as_deref(), Some("3D000" | "42501")),
            _ => false,
        }
    }

    /// Whether retrying later may succeed.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            PgError::Connect { source, .. } | PgError::Query(source) => source.is_unavailable(),
            PgError::Timeout(_) | PgError::Stopped => true,
            PgError::Batch(error) => error.is_unavailable(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for PgError {
    fn from(error: sqlx::Error) -> Self {
        PgError::Query(SqlxError(error))
    }
}

impl From<MigrateError> for PgError {
    fn from(error: MigrateError) -> Self {
        match error {
            // Reaching the database or the migrations table failed: an
            // ordinary statement failure, classified like any other.
            MigrateError::Execute(error) => PgError::Query(SqlxError(error)),
            MigrateError::ExecuteMigration(error, version) => PgError::Migration {
                version,
                source: SqlxError(error),
            },
            MigrateError::Source(source) => PgError::MigrationSource(source),
            other => PgError::Migrations(other),
        }
    }
}

/// The one mapping to [`StoreError`] categories. `NotFound` and `Conflict`
/// come from the store's own logic; everything else is `Unavailable` when
/// the server cannot serve us now and `Backend` otherwise.
impl From<PgError> for StoreError {
    fn from(error: PgError) -> Self {
        match error {
            PgError::NotFound(id) => StoreError::NotFound(id),
            PgError::Conflict { id, source } => StoreError::Conflict { id, source },
            PgError::Invalid(invalid) => StoreError::Invalid(invalid),
            error if error.is_unavailable() => StoreError::Unavailable(Box::new(error)),
            error => StoreError::Backend(Box::new(error)),
        }
    }
}

/// A `sqlx::Error` whose message does not repeat its source: sqlx's variant
/// as a short phrase, then sqlx's source as this error's source. An error
/// without a source (a pool timeout, a protocol violation) shows sqlx's own
/// message, which then is the whole story.
#[derive(Debug)]
pub(crate) struct SqlxError(sqlx::Error);

impl SqlxError {
    /// Whether the server cannot serve us now, as opposed to the statement
    /// being wrong.
    pub(crate) fn is_unavailable(&self) -> bool {
        if self.is_tls_failure() {
            // A certificate that is not trusted or names another server, a
            // server without TLS: retrying will not change it.
            return false;
        }
        match &self.0 {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_sqlstate(&code)),
            _ => false,
        }
    }
}

impl SqlxError {
    /// Whether TLS failed: sqlx's own TLS errors (no TLS on the server, an
    /// unreadable root certificate), and rustls's handshake failures (an
    /// untrusted certificate, a name mismatch), which reach us wrapped in
    /// an `InvalidData` I/O error.
    fn is_tls_failure(&self) -> bool {
        match &self.0 {
            sqlx::Error::Tls(_) => true,
            sqlx::Error::Io(error) => error
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()),
            _ => false,
        }
    }
}

impl fmt::Display for SqlxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.source().is_none() {
            return fmt::Display::fmt(&self.0, f);
        }
        if self.is_tls_failure() {
            return f.write_str("TLS error");
        }
        match &self.0 {
            sqlx::Error::Io(_) => f.write_str("I/O error"),
            sqlx::Error::Configuration(_) => f.write_str("invalid connection settings"),
            // The SQLSTATE and the constraint are ids; the server's message
            // is the source.
            sqlx::Error::Database(db) => {
                write!(f, "PostgreSQL error {}", db.code().unwrap_or_default())?;
                match db.constraint() {
                    Some(constraint) => write!(f, " (constraint {constraint})"),
                    None => Ok(()),
                }
            }
            sqlx::Error::Encode(_) => f.write_str("cannot encode a parameter"),
            sqlx::Error::ColumnDecode { index, .. } => write!(f, "cannot decode column {index}"),
            sqlx::Error::Decode(_) => f.write_str("cannot decode a value"),
            _ => f.write_str("database driver error"),
        }
    }
}

impl Error for SqlxError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// SQLSTATEs that mean "the server cannot serve us now", as opposed to "the
/// statement is wrong": connection exceptions (class 08), operator
/// intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
/// connect now) and too many connections (53300).
fn unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message in `error`'s chain, outermost first.
    fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
        let mut messages = Vec::new();
        let mut next = Some(error);
        while let Some(error) = next {
            messages.push(error.to_string());
            next = error.source();
        }
        messages
    }

    /// No message in the chain contains the message of its source.
    fn assert_each_cause_once(error: &(dyn Error + 'static)) {
        let messages = chain(error);
        for pair in messages.windows(2) {
            assert!(
                !pair[0].contains(&pair[1]),
                "{:?} repeats its source {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    fn refused() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[test]
    fn pool_and_io_failures_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            refused(),
        ] {
            assert!(matches!(
                StoreError::from(PgError::from(error)),
                StoreError::Unavailable(_)
            ));
        }
    }

    #[test]
    fn other_failures_are_backend_failures() {
        assert!(matches!(
            StoreError::from(PgError::from(sqlx::Error::RowNotFound)),
            StoreError::Backend(_)
        ));
        assert!(matches!(
            StoreError::from(PgError::Corrupt("bad status".into())),
            StoreError::Backend(_)
        ));
        assert!(matches!(
            StoreError::from(PgError::from(MigrateError::VersionMismatch(1))),
            StoreError::Backend(_)
        ));
    }

    #[test]
    fn a_refused_connection_is_unavailable() {
        let error = PgError::connect("127.0.0.1:1".into(), refused());
        assert!(matches!(
            StoreError::from(error),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn tls_failures_are_backend_failures_named_as_tls() {
        let untrusted = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let no_tls = sqlx::Error::Tls("server does not support TLS".into());
        for error in [untrusted, no_tls] {
            let error = StoreError::from(PgError::connect("db.example:5432".into(), error));
            assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
            assert_eq!(chain(&error)[2], "TLS error");
            assert_each_cause_once(&error);
        }
    }

    #[test]
    fn a_timeout_is_unavailable() {
        assert!(matches!(
            StoreError::from(PgError::Timeout(Duration::from_secs(1))),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn store_logic_errors_keep_their_category() {
        let id = CallId(uuid::Uuid::nil());
        assert!(matches!(
            StoreError::from(PgError::NotFound(id)),
            StoreError::NotFound(found) if found == id
        ));
    }

    #[test]
    fn connection_sqlstates_are_unavailable() {
        assert!(unavailable_sqlstate("08006"));
        assert!(unavailable_sqlstate("57P01"));
        assert!(unavailable_sqlstate("53300"));
        assert!(!unavailable_sqlstate("23505"));
        assert!(!unavailable_sqlstate("40001"));
    }

    #[test]
    fn sqlx_errors_print_each_cause_once() {
        let errors = [
            refused(),
            sqlx::Error::Tls("handshake failed".into()),
            sqlx::Error::Configuration("bad option".into()),
            sqlx::Error::Decode("not a number".into()),
            sqlx::Error::Encode("too long".into()),
            sqlx::Error::ColumnDecode {
                index: "3".into(),
                source: "out of range".into(),
            },
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Protocol("unexpected message".into()),
        ];
        for error in errors {
            let error = StoreError::from(PgError::connect("db.example:5432".into(), error));
            assert_each_cause_once(&error);
        }
        let migration = MigrateError::ExecuteMigration(refused(), 20_250_720_000_001);
        assert_each_cause_once(&StoreError::from(PgError::from(migration)));
        let url = "postgres://user:secret@host:notaport/db"
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect_err("the port is not a number");
        let url = StoreError::from(PgError::url(url));
        assert_each_cause_once(&url);
        assert!(
            !chain(&url).concat().contains("secret"),
            "{:?}",
            chain(&url)
        );
    }

    #[test]
    fn a_refused_connection_names_the_target_and_the_cause_once() {
        let error = StoreError::from(PgError::connect("127.0.0.1:1".into(), refused()));
        assert_eq!(
            chain(&error),
            [
                "store unavailable",
                "cannot connect to PostgreSQL at 127.0.0.1:1",
                "I/O error",
                "connection refused"
            ],
        );
    }
}
