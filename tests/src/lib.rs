//! Cross-crate conformance helpers.
