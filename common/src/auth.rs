//! The [`Project`] extractor: the authenticated API key of a request, for every service that
//! takes keys (ingest needs `ingest`, the query API `read`).
//!
//! Why an extractor: it implements [`FromRequestParts`], so axum runs it on the request head
//! before any body extractor, and a client without a valid key is answered (401, 403, 429,
//! 503) without the service reading, buffering or decompressing a byte of its body. Written
//! by hand in each handler, that order was a convention each service had to keep; here it is
//! in the types. It also puts the failed-authentication limit per client address
//! ([`Authenticator::with_failure_limit`]) in one place: the address comes from axum's
//! `ConnectInfo<SocketAddr>` (served with `into_make_service_with_connect_info`); without it
//! (a router called directly, as in unit tests) failures are not counted per address.
//!
//! Why a trait on the state ([`ProjectKeys`]): the extractor needs each service's own
//! [`Authenticator`] (its key cache and failure limit are per service) and the scope its
//! endpoints require; the state is what axum hands every extractor, so the service says both
//! there once, instead of every handler passing them. [`ProjectKeys::refused`] lets a service
//! count refusals in its own metrics (ingest counts `failed_auth`) without the extractor
//! knowing them. The rejection is the typed [`AuthError`]; it answers as
//! `From<AuthError> for ApiError` (in [`crate::api_error`]) says. A service that needs more
//! than the key before its handler runs (the query API's per-project concurrency permit)
//! builds its own extractor on this one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::api_error::ApiError;
use crate::keys::{AuthError, Authenticator, Principal, Scope};

/// A service state whose requests carry API keys: what [`Project`] needs from it.
pub trait ProjectKeys: Send + Sync {
    /// The scope a key must hold for this service's endpoints.
    const SCOPE: Scope;

    /// The service's authenticator (its cache and its limit on failed attempts).
    fn authenticator(&self) -> &Authenticator;

    /// Called with every refusal before it is answered, for the service's own metrics.
    fn refused(&self, error: &AuthError) {
        let _ = error;
    }
}

/// Services keep their state in an `Arc` (axum clones the state for every request).
impl<T: ProjectKeys> ProjectKeys for Arc<T> {
    const SCOPE: Scope = T::SCOPE;

    fn authenticator(&self) -> &Authenticator {
        T::authenticator(self)
    }

    fn refused(&self, error: &AuthError) {
        T::refused(self, error)
    }
}

/// The project of the request's API key, which holds the service's scope
/// ([`ProjectKeys::SCOPE`]); the [`Principal`] says which project and what else the key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project(pub Principal);

impl<S: ProjectKeys> FromRequestParts<S> for Project {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        authenticate(parts, state, S::SCOPE).await.map(Project)
    }
}

/// The principal of the request's key, which must hold `scope`; refusals are reported to the
/// service. [`Project`] calls it with the service's scope; an endpoint that needs another
/// scope (the query API's admin endpoints) calls it with that one.
pub async fn authenticate<S: ProjectKeys>(parts: &Parts, state: &S, scope: Scope) -> Result<Principal, AuthError> {
    let client = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(address)| address.ip());
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let span = tracing::info_span!("authenticate", scope = %scope);
    let outcome = async {
        let principal = state.authenticator().authenticate_from(client, authorization).await?;
        principal.require(scope)?;
        Ok::<_, AuthError>(principal)
    }
    .instrument(span)
    .await;
    outcome.inspect_err(|error| state.refused(error))
}

/// A refused key answers as [`ApiError`] renders it (401/403/429/503, see there).
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::http::{Request, StatusCode};

    use super::*;

    struct TestState {
        authenticator: Authenticator,
        refusals: Mutex<Vec<AuthError>>,
    }

    impl ProjectKeys for TestState {
        const SCOPE: Scope = Scope::Ingest;

        fn authenticator(&self) -> &Authenticator {
            &self.authenticator
        }

        fn refused(&self, error: &AuthError) {
            self.refusals.lock().unwrap().push(error.clone());
        }
    }

    /// The extractor on the head of a request with `authorization`: the head is all it gets
    /// (tests/auth_before_body.rs shows the same through ingest, with a body that never ends).
    async fn extract(state: &TestState, authorization: Option<&str>) -> Result<Project, AuthError> {
        let mut request = Request::post("/v1/events");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        Project::from_request_parts(&mut parts, state).await
    }

    #[tokio::test]
    async fn refusals_are_typed_and_reported_to_the_service() {
        // Never connected to: none of these keys is looked up (only `tally_…` keys are).
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let state = TestState { authenticator: Authenticator::new(pool, Duration::from_secs(60)), refusals: Mutex::default() };
        for (authorization, expected) in [(None, AuthError::Missing), (Some("Basic abc"), AuthError::Malformed), (Some("Bearer made-up"), AuthError::Unknown)] {
            assert_eq!(extract(&state, authorization).await, Err(expected.clone()), "{authorization:?}");
            assert_eq!(state.refusals.lock().unwrap().pop(), Some(expected), "the service saw the refusal");
        }
    }

    #[test]
    fn refusals_answer_as_the_api_error_says() {
        let missing = AuthError::Missing.into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        let limited = AuthError::TooManyFailures.into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "1");
        let scope = AuthError::InsufficientScope { needed: Scope::Read, held: "ingest".into() }.into_response();
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
    }
}
