//! String literals → validated topics and patterns, with errors spanned on the literal.

use syn::LitStr;
use tchu_core::topic::{validate_pattern, validate_topic};

// The whole literal is spanned: sub-spans inside literals are nightly-only (dtolnay/syn#735);
// the byte offset goes in the message instead.
/// The topic in `lit`, or an error spanned on it.
pub(crate) fn topic(lit: &LitStr) -> syn::Result<String> {
    let v = lit.value();
    validate_topic(&v)
        .map_err(|e| syn::Error::new(lit.span(), format!("invalid topic {v:?}: {e}")))?;
    Ok(v)
}

/// The topic pattern in `lit`, or an error spanned on it.
pub(crate) fn pattern(lit: &LitStr) -> syn::Result<String> {
    let v = lit.value();
    validate_pattern(&v)
        .map_err(|e| syn::Error::new(lit.span(), format!("invalid topic pattern {v:?}: {e}")))?;
    Ok(v)
}
