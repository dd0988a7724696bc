//! Extractors whose rejections are the standard error body ([`ApiError`], code `invalid_request`,
//! field `query`) instead of axum's plain-text 400.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, invalid};

/// The query string deserialized into `T`; a query that does not deserialize is a 400 naming
/// the field `query` and why.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Self(q))
            .map_err(|e| invalid("query", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Q {
        days: Option<u32>,
    }

    async fn extract(uri: &str) -> Result<Q, ApiError> {
        let (mut parts, ()) = Request::get(uri).body(()).expect("request").into_parts();
        Query::<Q>::from_request_parts(&mut parts, &())
            .await
            .map(|Query(q)| q)
    }

    #[tokio::test]
    async fn a_bad_query_is_an_invalid_request_naming_the_query() {
        assert_eq!(
            extract("/x?days=3").await.expect("valid"),
            Q { days: Some(3) }
        );
        for uri in ["/x?days=many", "/x?nights=3"] {
            let e = extract(uri).await.expect_err("invalid");
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "invalid_request"),
                "{uri}"
            );
            assert_eq!(e.details[0].field, "query", "{uri}");
            assert!(!e.message.is_empty());
        }
    }
}
