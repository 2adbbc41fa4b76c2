//! Who may do what: the API-key check in front of every route ([`authenticate`]) and the
//! replica's copy of the valid keys ([`Keys`]), reloaded from PostgreSQL every
//! `auth.refresh_ms` so that a key revoked with `tally keys revoke` is refused by every
//! replica within about that long, without a restart.
//!
//! A request is refused before any handler runs — nothing is read, published or written for
//! it: 401 `unauthorized` without a key, with one that is malformed, unknown or revoked; 403
//! `forbidden` with a valid key lacking the route's scope ([`tally_core::auth::required`]).
//! A key's text is never logged; its name is (the request's span carries `key`), and the
//! handler of `POST /transaction` puts it into the envelope ([`Caller`]).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpRequest, ResponseError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tally_core::auth::{required, Access, KeyDigest, PresentedKey, Scope};
use tally_settings::AuthSettings;
use tally_store::keys::ActiveKey;
use tally_store::{Pool, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The key a request was let in with (a request extension set by [`authenticate`]).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
}

impl Caller {
    /// The name of the key `req` came with; `None` when auth is off or the route is public.
    pub fn name_of(req: &HttpRequest) -> Option<String> {
        req.extensions().get::<Caller>().map(|c| c.name.clone())
    }
}

/// This replica's view of the keys not revoked, by key id.
pub struct Keys {
    enabled: bool,
    public_metrics: bool,
    set: RwLock<Arc<HashMap<Uuid, ActiveKey>>>,
}

/// Why a request was refused (logged; the client only sees 401 or 403).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Unknown,
    WrongSecret,
    /// A valid key (its name) without the scope.
    Scope(Scope, String),
}

impl Keys {
    /// Loads the keys (when auth is on) and keeps reloading them every `auth.refresh_ms`
    /// until `shutdown`. A reload that fails keeps the last set: a replica cut off from
    /// PostgreSQL cannot learn of a revocation, but neither can anyone make one it would miss
    /// for long (SECURITY.md).
    pub async fn start(
        pool: Pool,
        settings: &AuthSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let keys = Arc::new(Self {
            enabled: settings.enabled,
            public_metrics: settings.public_metrics,
            set: RwLock::new(Arc::default()),
        });
        if !settings.enabled {
            return Ok(keys);
        }
        keys.replace(tally_store::keys::active(&pool).await?);
        let every = Duration::from_millis(settings.refresh_ms);
        let reloading = keys.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match tally_store::keys::active(&pool).await {
                    Ok(active) => {
                        if failing {
                            tracing::info!("API keys reloaded again");
                        }
                        failing = false;
                        reloading.replace(active);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "reloading API keys failed; keeping the last set");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(keys)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn replace(&self, active: Vec<ActiveKey>) {
        let set = Arc::new(active.into_iter().map(|k| (k.id, k)).collect());
        // A poisoned lock only means a panic while swapping an Arc: the value is whole.
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    fn current(&self) -> Arc<HashMap<Uuid, ActiveKey>> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The caller a request with `authorization` may be served as for `access`; `Ok(None)`
    /// when no key is needed.
    fn admit(
        &self,
        access: Access,
        authorization: Option<&str>,
    ) -> Result<Option<Caller>, Refusal> {
        if !self.enabled || access == Access::Public {
            return Ok(None);
        }
        let text = authorization
            .ok_or(Refusal::Missing)?
            .strip_prefix("Bearer ")
            .ok_or(Refusal::Malformed)?;
        let presented = PresentedKey::parse(text.trim()).ok_or(Refusal::Malformed)?;
        let set = self.current();
        let key = set.get(&presented.id).ok_or(Refusal::Unknown)?;
        if !KeyDigest::of(presented.secret).matches(&key.digest) {
            return Err(Refusal::WrongSecret);
        }
        if let Access::Scope(scope) = access {
            if !scope.granted_by(&key.scopes) {
                return Err(Refusal::Scope(scope, key.name.clone()));
            }
        }
        Ok(Some(Caller {
            name: key.name.clone(),
        }))
    }
}

/// The middleware (`App::wrap(from_fn(authenticate))`, inside [`crate::observe::observe`] so
/// that refusals carry a request id and are counted).
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let Some(keys) = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.keys.clone())
    else {
        // Not installed with its keys: refuse rather than serve unchecked.
        let refused = ApiError::Internal("API keys are not loaded".into()).error_response();
        return Ok(req.into_response(refused).map_into_right_body());
    };
    let access = required(
        req.method().as_str(),
        req.match_pattern().as_deref(),
        keys.public_metrics,
    );
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    match keys.admit(access, authorization) {
        Ok(caller) => {
            if let Some(caller) = caller {
                tracing::Span::current().record("key", caller.name.as_str());
                req.extensions_mut().insert(caller);
            }
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(refusal) => {
            let error = match refusal {
                Refusal::Scope(scope, _) => ApiError::Forbidden {
                    message: format!("this key does not grant the scope `{scope}`"),
                },
                _ => ApiError::Unauthorized,
            };
            tracing::info!(
                method = %req.method(),
                path = req.path(),
                reason = ?refusal,
                "request refused by the API key check"
            );
            Ok(req
                .into_response(error.error_response())
                .map_into_right_body())
        }
    }
}
