//! The send stage's one retry, for both routes: an upstream that refuses a user's OAuth token
//! (`401`) before it expires (revoked, rotated elsewhere) gets the request once more with a
//! refreshed token. The refresh is the broker's single-flight one, so any number of requests
//! refused with one token cost one refresh.

use std::future::Future;

use axum::http::{HeaderValue, StatusCode};
use keygate_core::model::AuthMode;

use crate::error::ProxyError;
use crate::stage::{Call, credential};

/// An upstream's answer.
pub type Answer = http::Response<hyper::body::Incoming>;

/// Sends with `authorization` through `send_once`. For an OAuth integration an upstream `401`
/// refreshes `caller`'s token and sends once more with it (its answer is final, whatever it
/// is); when the grant turns out to be gone, [`ProxyError::NotConnected`]. Anything else is
/// sent once.
pub async fn send<F, Fut>(
    call: Call<'_>,
    authorization: Option<HeaderValue>,
    mut send_once: F,
) -> Result<Answer, ProxyError>
where
    F: FnMut(Option<HeaderValue>) -> Fut,
    Fut: Future<Output = Result<Answer, ProxyError>>,
{
    let resp = send_once(authorization.clone()).await?;
    if call.integration.auth_mode != AuthMode::Oauth || resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    match credential::after_rejection(call, authorization.as_ref()).await? {
        Some(fresh) => {
            drop(resp);
            send_once(Some(fresh)).await
        }
        None => Ok(resp),
    }
}
