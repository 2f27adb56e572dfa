//! The OpenAPI 3.1 document of the API.

/// The document, serialised.
pub(crate) fn document_json() -> Vec<u8> {
    b"{}".to_vec()
}
