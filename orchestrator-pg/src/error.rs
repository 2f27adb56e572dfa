//! The one place where PostgreSQL failures become [`StoreError`] categories.
//!
//! Classification uses sqlx's error variants and SQLSTATE codes (via
//! [`sqlx::error::DatabaseError`]), never message text.

use orchestrator_core::StoreError;
use sqlx::error::ErrorKind;

/// A failure inside this crate, before it is mapped to a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// A query or connection failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data breaks an invariant of ours (e.g. a row that cannot be a
    /// [`orchestrator_core::Call`]): something else wrote to the database.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A constraint refused a write that our own statements should never
    /// attempt; the message names the constraint.
    #[error("constraint {constraint} refused the write ({kind:?}): {source}")]
    Constraint {
        /// The category sqlx reports.
        kind: ErrorKind,
        /// The constraint's name, as declared in the migrations.
        constraint: String,
        /// The database error.
        source: sqlx::Error,
    },
}

/// SQLSTATEs that mean "the server cannot serve us now", as opposed to "the
/// statement is wrong": connection exceptions (class 08), operator
/// intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
/// connect now) and too many connections (53300).
fn unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

impl From<PgError> for StoreError {
    fn from(error: PgError) -> Self {
        match error {
            PgError::Sqlx(error) => classify(error),
            PgError::Migrate(sqlx::migrate::MigrateError::Execute(error)) => classify(error),
            PgError::Migrate(other) => StoreError::Backend(Box::new(other)),
            corrupt @ PgError::Corrupt(_) => StoreError::Backend(Box::new(corrupt)),
            constraint @ PgError::Constraint { .. } => StoreError::Backend(Box::new(constraint)),
        }
    }
}

fn classify(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_sqlstate(&code)),
        _ => false,
    };
    if unavailable {
        return StoreError::Unavailable(Box::new(error));
    }
    let constraint = error.as_database_error().and_then(|db| match db.kind() {
        ErrorKind::Other => None,
        kind => Some((kind, db.constraint().unwrap_or("?").to_owned())),
    });
    match constraint {
        Some((kind, constraint)) => StoreError::Backend(Box::new(PgError::Constraint {
            kind,
            constraint,
            source: error,
        })),
        None => StoreError::Backend(Box::new(error)),
    }
}

/// `result` with its error mapped to a [`StoreError`]; for `?` in the store.
pub(crate) trait OrStore<T> {
    /// Maps the error through [`PgError`].
    fn or_store(self) -> Result<T, StoreError>;
}

impl<T, E: Into<PgError>> OrStore<T> for Result<T, E> {
    fn or_store(self) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::from(error.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_failures_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(matches!(
                StoreError::from(PgError::Sqlx(error)),
                StoreError::Unavailable(_)
            ));
        }
    }

    #[test]
    fn other_failures_are_backend_failures() {
        assert!(matches!(
            StoreError::from(PgError::Sqlx(sqlx::Error::RowNotFound)),
            StoreError::Backend(_)
        ));
        assert!(matches!(
            StoreError::from(PgError::Corrupt("bad status".into())),
            StoreError::Backend(_)
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
}
