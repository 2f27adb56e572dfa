//! API keys: who may use the client API.
//!
//! When the router has keys ([`AppState::with_api_keys`](crate::AppState::with_api_keys)),
//! every operation except liveness (`GET /health`), readiness (`GET /ready`)
//! and the provider's webhooks requires `Authorization: Bearer <key>`
//! (RFC 6750 section 2.1) with one of them; any other request gets 401 with
//! `WWW-Authenticate: Bearer` and a problem document. A webhook is
//! authenticated by its signature instead (see [`crate::signature`]), so a
//! provider never holds an API key. A Prometheus scraper sends the header
//! like any client (`authorization` in its scrape configuration).
//!
//! Keys are held as secrets and only their SHA-256 digests are kept; a
//! presented key is hashed and compared with every digest in constant time,
//! without stopping at a match, so neither the time an answer takes nor
//! its content says which key matched, how many there are, or how much of a
//! wrong key was right. Keys never appear in `Debug` output or logs.

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::problem::ApiError;

/// Fewest characters in a key: shorter ones could be guessed.
pub const MIN_KEY_LEN: usize = 16;
/// Most characters in a key.
pub const MAX_KEY_LEN: usize = 512;

/// A non-empty set of API keys, each 16 to 512 visible ASCII characters
/// other than `,` (so that a list of them can be written comma-separated and
/// each can be sent in an `Authorization` header). Cheap to clone.
///
/// ```
/// use orchestrator_http::ApiKeys;
///
/// let keys: ApiKeys = "k3y-for-the-crm-0001,k3y-for-prometheus-02".parse()?;
/// assert!(keys.accepts("k3y-for-prometheus-02"));
/// assert!(!keys.accepts("k3y-for-prometheus-03"));
/// // `Debug` never shows a key.
/// assert!(!format!("{keys:?}").contains("k3y"));
/// # Ok::<(), orchestrator_http::auth::ApiKeyError>(())
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    digests: std::sync::Arc<[SecretBox<[u8; 32]>]>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

/// Why a list of keys was refused. Never quotes a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// No key at all.
    #[error("no API key given")]
    Empty,
    /// The key at this position (1-based: in a list, its place; in a file, its line).
    #[error("API key {position}: {reason}")]
    Invalid {
        /// The key's place in the list, or its line in the file.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ApiKeys {
    /// Keys from `keys`, each checked as the type's documentation says.
    ///
    /// # Errors
    /// [`ApiKeyError::Empty`] for no key; [`ApiKeyError::Invalid`] naming the
    /// first bad key by position.
    pub fn new<'a>(keys: impl IntoIterator<Item = (usize, &'a str)>) -> Result<Self, ApiKeyError> {
        let mut digests = Vec::new();
        for (position, key) in keys {
            let invalid = |reason| ApiKeyError::Invalid { position, reason };
            if key.len() < MIN_KEY_LEN {
                return Err(invalid("shorter than 16 characters"));
            }
            if key.len() > MAX_KEY_LEN {
                return Err(invalid("longer than 512 characters"));
            }
            if !key
                .bytes()
                .all(|byte| byte.is_ascii_graphic() && byte != b',')
            {
                return Err(invalid(
                    "may hold only visible ASCII characters other than ','",
                ));
            }
            digests.push(SecretBox::new(Box::new(digest(key.as_bytes()))));
        }
        if digests.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        Ok(Self {
            digests: digests.into(),
        })
    }

    /// Keys from the text of a keys file: one key a line; surrounding
    /// whitespace, blank lines and lines starting with `#` are ignored.
    ///
    /// # Errors
    /// As [`new`](Self::new); positions are line numbers.
    pub fn from_lines(text: &str) -> Result<Self, ApiKeyError> {
        Self::new(
            text.lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line.trim()))
                .filter(|(_, line)| !line.is_empty() && !line.starts_with('#')),
        )
    }

    /// These keys and those of `other`.
    #[must_use]
    pub fn union(&self, other: &ApiKeys) -> Self {
        let digests: Vec<_> = self
            .digests
            .iter()
            .chain(other.digests.iter())
            .map(|digest| SecretBox::new(Box::new(*digest.expose_secret())))
            .collect();
        Self {
            digests: digests.into(),
        }
    }

    /// How many keys there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Always `false`: a set of keys is never empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys, in constant time: every key
    /// is compared, whatever the outcome.
    #[must_use]
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented.as_bytes());
        let matched = self.digests.iter().fold(Choice::from(0), |matched, key| {
            matched | key.expose_secret().ct_eq(&presented)
        });
        matched.into()
    }
}

/// A comma-separated list (`API_KEYS`): surrounding whitespace of each key
/// is ignored, and so are empty items, e.g. after a trailing comma.
impl FromStr for ApiKeys {
    type Err = ApiKeyError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::new(
            list.split(',')
                .enumerate()
                .map(|(index, key)| (index + 1, key.trim()))
                .filter(|(_, key)| !key.is_empty()),
        )
    }
}

/// Hashing first makes the comparison's cost independent of the keys' lengths.
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What was wrong with a request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Credentials {
    /// No `Authorization` header, or not the `Bearer` scheme.
    #[error("this operation requires an API key: send it as \"Authorization: Bearer <key>\"")]
    Missing,
    /// A bearer token that is not one of the keys.
    #[error("the API key is not valid")]
    Invalid,
}

/// Middleware: lets the request through when it carries one of `keys` as a
/// bearer token; answers 401 otherwise ([`ApiError::Unauthenticated`]).
pub(crate) async fn require_api_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match token {
        Some(token) if keys.accepts(token) => next.run(request).await,
        Some(_) => ApiError::Unauthenticated(Credentials::Invalid).into_response(),
        None => ApiError::Unauthenticated(Credentials::Missing).into_response(),
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// section 11.1), and surrounding spaces are ignored.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef";

    #[test]
    fn a_list_holds_every_key_and_only_them() {
        let keys: ApiKeys = format!(" {KEY} , {KEY}-second ,").parse().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(KEY));
        assert!(keys.accepts(&format!("{KEY}-second")));
        for wrong in [
            "",
            "0123456789abcde",
            "0123456789abcdeF",
            "0123456789abcdef-",
        ] {
            assert!(!keys.accepts(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn a_file_skips_blank_lines_and_comments() {
        let keys = ApiKeys::from_lines(&format!(
            "# keys of the CRM\n\n  {KEY}  \n# rotated on Monday\n{KEY}-new\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(&format!("{KEY}-new")));
    }

    #[test]
    fn bad_keys_are_refused_by_position_without_being_quoted() {
        assert_eq!("".parse::<ApiKeys>().unwrap_err(), ApiKeyError::Empty);
        assert_eq!(
            ApiKeys::from_lines("# only\n\n").unwrap_err(),
            ApiKeyError::Empty
        );
        let error = format!("{KEY},short").parse::<ApiKeys>().unwrap_err();
        assert!(
            matches!(error, ApiKeyError::Invalid { position: 2, .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("short,"), "{error}");
        let error = ApiKeys::from_lines(&format!("{KEY}\n\n{KEY} with space\n")).unwrap_err();
        assert!(
            matches!(error, ApiKeyError::Invalid { position: 3, .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains(KEY), "{error}");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(
            long.parse::<ApiKeys>().unwrap_err(),
            ApiKeyError::Invalid { position: 1, .. }
        ));
    }

    #[test]
    fn a_union_accepts_the_keys_of_both() {
        let a: ApiKeys = KEY.parse().unwrap();
        let b = ApiKeys::from_lines("fedcba9876543210\n").unwrap();
        let both = a.union(&b);
        assert_eq!(both.len(), 2);
        assert!(both.accepts(KEY) && both.accepts("fedcba9876543210"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
