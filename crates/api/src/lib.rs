//! weft-api: Weft's REST server. Stateless: every request reads or writes the store, so any
//! number of replicas can serve the same store. See docs/api.md for the resources, the tokens
//! and the errors; `GET /openapi.json` is the machine-readable description, built from the
//! same route table as the server ([`app`]), so the two cannot disagree.
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod pool;
pub mod server;
pub mod types;

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weft_store::Store;

use crate::auth::Tokens;
use crate::handlers::*;

/// The default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "weft-api",
        description = "Weft's REST API: networks, address usage and lookup, allocations, \
reservations and address pools, nodes, check. Bearer tokens: a read token may GET; writes need \
an admin token. Errors are {\"error\": ..., \"field\": ...}."
    ),
    modifiers(&Bearer),
    components(schemas(crate::types::ErrorBody))
)]
struct ApiDoc;

struct Bearer;
impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The server's routes and the OpenAPI document describing exactly those routes.
pub fn app(
    store: Arc<dyn Store>,
    tokens: Tokens,
    max_body: usize,
) -> (axum::Router, utoipa::openapi::OpenApi) {
    extract::set_max_body(max_body);
    let state = AppState {
        store,
        openapi: Arc::new(OnceLock::new()),
    };
    let guarded = OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(list_networks, create_network))
        .routes(routes!(
            get_network,
            put_network,
            patch_network,
            delete_network
        ))
        .routes(routes!(network_usage))
        .routes(routes!(list_reservations, create_reservation))
        .routes(routes!(get_reservation, release_reservation))
        .routes(routes!(list_all_reservations))
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(get_pool, release_pool))
        .routes(routes!(lookup_ip))
        .routes(routes!(list_allocations))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node))
        .routes(routes!(check))
        .routes(routes!(repair))
        .route_layer(middleware::from_fn_with_state(
            Arc::new(tokens),
            auth::require_token,
        ));
    let open = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(guarded)
        .merge(open)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone())
        .split_for_parts();
    let _ = state
        .openapi
        .set(serde_json::to_string_pretty(&api).unwrap_or_default());
    (router, api)
}
