//! The routes. Every handler reads or writes the store from a store thread ([`blocking`],
//! [`crate::pool`]): the store clients are synchronous.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use weft_ipam::query::{self, Holder};
use weft_ipam::{Identity, Ipam, NetworkRecord, ReleasePolicy};
use weft_store::Store;

use crate::error::ApiError;
use crate::extract::{JsonBody, decode};
use crate::types::*;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The OpenAPI document, serialised once at start.
    pub openapi: Arc<OnceLock<String>>,
}

type R<T> = Result<T, ApiError>;

/// Runs store work on a store thread ([`crate::pool`]).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> R<T> + Send + 'static) -> R<T> {
    crate::pool::run(f)
        .await
        .map_err(|e| ApiError::internal(format!("request worker failed: {e}")))?
}

/// `Query` with errors in the API's format.
pub struct Q<T>(pub T);
impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> R<Self> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad("query", e.body_text()))
    }
}

/// `Path` with errors in the API's format.
pub struct P<T>(pub T);
impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> R<Self> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e| ApiError::bad("path", e.body_text()))
    }
}

/// Network names: 1-63 letters, digits, '.', '_', '-', not '.' or '..'.
pub fn check_network_name(field: &str, name: &str) -> R<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("network name {name:?} is not valid: use 1-63 letters, digits, '.', '_', '-'"),
        ))
    }
}

fn stored_network(store: &dyn Store, name: &str) -> R<NetworkRecord> {
    check_network_name("name", name)?;
    query::network(store, name)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "network {name:?} does not exist (weftctl get networks lists them)"
        ))
    })
}

fn network_view(store: &dyn Store, rec: &NetworkRecord) -> R<Network> {
    let u = query::usage(store, &rec.spec, false)?;
    Ok(Network::new(rec, &u.families))
}

const TAG_NET: &str = "networks";
const TAG_ADDR: &str = "addresses";
const TAG_FIXED: &str = "reservations";
const TAG_NODES: &str = "nodes";
const TAG_OPS: &str = "operations";

// ---------------------------------------------------------------- health, docs, metrics

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = TAG_OPS,
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        store: None,
        revision: None,
    })
}

/// Readiness: the store answers (503 naming the store when it does not).
#[utoipa::path(get, path = "/readyz", tag = TAG_OPS,
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(st): State<AppState>) -> R<Json<Health>> {
    blocking(move || {
        let rev = st.store.revision().map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store {} does not answer: {e}", st.store.describe()),
            )
        })?;
        Ok(Json(Health {
            status: "ready".into(),
            store: Some(st.store.describe()),
            revision: Some(rev),
        }))
    })
    .await
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = TAG_OPS,
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json(State(st): State<AppState>) -> Response {
    let body = st.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics in the OpenMetrics text format (read token).
#[utoipa::path(get, path = "/metrics", tag = TAG_OPS, security(("bearer" = [])),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
        (status = 401, body = ErrorBody)))]
pub async fn metrics(State(st): State<AppState>) -> R<Response> {
    blocking(move || {
        let text = weft_metrics::render_api(&*st.store)?;
        Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
    })
    .await
}

// ---------------------------------------------------------------- networks

/// Every network, with its usage per family.
#[utoipa::path(get, path = "/v1/networks", tag = TAG_NET, security(("bearer" = [])),
    responses((status = 200, body = [Network]), (status = 401, body = ErrorBody)))]
pub async fn list_networks(State(st): State<AppState>) -> R<Json<Vec<Network>>> {
    blocking(move || {
        let ipam = Ipam::new(&*st.store);
        let mut out = Vec::new();
        for rec in ipam.networks()? {
            out.push(network_view(&*st.store, &rec)?);
        }
        Ok(Json(out))
    })
    .await
}

/// Creates a network (409 when it exists or a pool overlaps another network's).
#[utoipa::path(post, path = "/v1/networks", tag = TAG_NET, security(("bearer" = [])),
    request_body = NetworkInput,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_network(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<NetworkInput>,
) -> R<(StatusCode, Json<Network>)> {
    let Some(name) = body.name.clone() else {
        return Err(ApiError::invalid(
            "name",
            "name: missing: a new network needs a name",
        ));
    };
    check_network_name("name", &name)?;
    let spec = body.to_spec(&name);
    blocking(move || {
        let (rec, _) = query::put_network(&*st.store, &spec, true)?;
        Ok((StatusCode::CREATED, Json(network_view(&*st.store, &rec)?)))
    })
    .await
}

/// One network.
#[utoipa::path(get, path = "/v1/networks/{name}", tag = TAG_NET, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
pub async fn get_network(State(st): State<AppState>, P(name): P<String>) -> R<Json<Network>> {
    blocking(move || {
        let rec = stored_network(&*st.store, &name)?;
        Ok(Json(network_view(&*st.store, &rec)?))
    })
    .await
}

fn put_spec(st: &AppState, name: &str, body: &NetworkInput) -> R<(StatusCode, Json<Network>)> {
    check_network_name("name", name)?;
    if let Some(n) = &body.name
        && n != name
    {
        return Err(ApiError::invalid(
            "name",
            format!("name {n:?} in the body differs from {name:?} in the path"),
        ));
    }
    let spec = body.to_spec(name);
    let (rec, created) = query::put_network(&*st.store, &spec, false)?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(network_view(&*st.store, &rec)?)))
}

/// Creates or replaces a network. Pools may be added; a pool with claimed blocks may not be
/// changed or dropped, nor block sizes changed while any block is claimed (409).
#[utoipa::path(put, path = "/v1/networks/{name}", tag = TAG_NET, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    request_body = NetworkInput,
    responses((status = 200, body = Network), (status = 201, body = Network),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_network(
    State(st): State<AppState>,
    P(name): P<String>,
    JsonBody(body): JsonBody<NetworkInput>,
) -> R<(StatusCode, Json<Network>)> {
    blocking(move || put_spec(&st, &name, &body)).await
}

/// Edits fields of a network (JSON merge patch over its fields; same rules as PUT).
#[utoipa::path(patch, path = "/v1/networks/{name}", tag = TAG_NET, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    request_body(content = Object, description = "Any fields of NetworkInput"),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_network(
    State(st): State<AppState>,
    P(name): P<String>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> R<(StatusCode, Json<Network>)> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(ApiError::invalid(
            "body",
            "a PATCH body is a JSON object of the fields to change",
        ));
    };
    blocking(move || {
        let rec = stored_network(&*st.store, &name)?;
        let mut cur = serde_json::to_value(NetworkInput::from_spec(&rec.spec))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let serde_json::Value::Object(m) = &mut cur {
            for (k, v) in patch {
                if v.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, v);
                }
            }
        }
        let bytes = serde_json::to_vec(&cur).map_err(|e| ApiError::internal(e.to_string()))?;
        let body: NetworkInput = decode(&bytes)?;
        put_spec(&st, &name, &body)
    })
    .await
}

/// Deletes a network. With live allocations, reservations or address pools: 409 unless
/// `force=true`, which removes them too.
#[utoipa::path(delete, path = "/v1/networks/{name}", tag = TAG_NET, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name"), DeleteQuery),
    responses((status = 200, body = DeletedNetwork), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_network(
    State(st): State<AppState>,
    P(name): P<String>,
    Q(q): Q<DeleteQuery>,
) -> R<Json<DeletedNetwork>> {
    check_network_name("name", &name)?;
    blocking(move || {
        let d = query::delete_network(&*st.store, &name, q.force.unwrap_or(false))?;
        Ok(Json(DeletedNetwork {
            network: name,
            allocations: d.allocations,
            reservations: d.reservations,
            pools: d.pools,
            blocks: d.blocks,
        }))
    })
    .await
}

/// Address usage of a network: per family, and per node.
#[utoipa::path(get, path = "/v1/networks/{name}/usage", tag = TAG_NET, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = NetworkUsage), (status = 404, body = ErrorBody)))]
pub async fn network_usage(
    State(st): State<AppState>,
    P(name): P<String>,
) -> R<Json<NetworkUsage>> {
    blocking(move || {
        let rec = stored_network(&*st.store, &name)?;
        let u = query::usage(&*st.store, &rec.spec, true)?;
        Ok(Json(NetworkUsage {
            network: u.network,
            families: u.families.iter().map(FamilyCounts::from).collect(),
            nodes: u.nodes.iter().map(NodeShare::from).collect(),
            blocks_claimed: u.blocks_claimed,
            blocks_total: sat(u.blocks_total),
        }))
    })
    .await
}

// ---------------------------------------------------------------- reservations and pools

/// Reservations of one network.
#[utoipa::path(get, path = "/v1/networks/{name}/reservations", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = [ReservationView]), (status = 404, body = ErrorBody)))]
pub async fn list_reservations(
    State(st): State<AppState>,
    P(name): P<String>,
) -> R<Json<Vec<ReservationView>>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        let rs = Ipam::new(&*st.store).reservations(&name)?;
        Ok(Json(rs.iter().map(ReservationView::from).collect()))
    })
    .await
}

/// Reserves fixed addresses for a workload identity ahead of its pod.
#[utoipa::path(post, path = "/v1/networks/{name}/reservations", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    request_body = ReservationInput,
    responses((status = 201, body = ReservationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_reservation(
    State(st): State<AppState>,
    P(name): P<String>,
    JsonBody(body): JsonBody<ReservationInput>,
) -> R<(StatusCode, Json<ReservationView>)> {
    let policy = match body.policy.as_deref() {
        None => ReleasePolicy::Never,
        Some(p) => p
            .parse::<ReleasePolicy>()
            .map_err(|e| ApiError::invalid("policy", e))?,
    };
    if body.addresses.is_empty() {
        return Err(ApiError::invalid(
            "addresses",
            "addresses: give one address per family to reserve, e.g. [\"198.18.0.10\"]",
        ));
    }
    let identity = Identity {
        key: body.key.clone(),
        policy,
        workload: body.workload.clone(),
        ordinal: body.ordinal,
    };
    blocking(move || {
        let rec = stored_network(&*st.store, &name)?;
        if let Ok(existing) = find_reservation(&*st.store, &name, &identity.key) {
            let addrs: Vec<String> = existing.addresses.iter().map(|a| a.addr().to_string()).collect();
            return Err(ApiError::field(
                StatusCode::CONFLICT,
                "key",
                format!(
                    "network {name:?} already has reservation {:?} ({}); release it first (weftctl release)",
                    identity.key,
                    addrs.join(", ")
                ),
            ));
        }
        let r = Ipam::new(&*st.store).reserve(&rec.spec, &identity, &body.addresses)?;
        Ok((StatusCode::CREATED, Json(ReservationView::from(&r))))
    })
    .await
}

fn no_reservation(network: &str, key: &str) -> ApiError {
    ApiError::not_found(format!("network {network:?} has no reservation {key:?}"))
}

fn no_pool(network: &str, pool: &str) -> ApiError {
    ApiError::not_found(format!("network {network:?} has no address pool {pool:?}"))
}

/// The reservation `key` of `network`, read by its key. A key that is not a valid identity
/// key can never have been stored: not found, as for any other missing key.
fn find_reservation(store: &dyn Store, network: &str, key: &str) -> R<weft_ipam::Reservation> {
    let found = match weft_ipam::fixed::validate_name(network, "key", key) {
        Ok(()) => query::reservation(store, network, key)?,
        Err(_) => None,
    };
    found.ok_or_else(|| no_reservation(network, key))
}

/// One reservation (the key URL-encoded: `prod%2Fdb%2F0`).
#[utoipa::path(get, path = "/v1/networks/{name}/reservations/{key}", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name"),
        ("key" = String, Path, description = "Identity key, URL-encoded")),
    responses((status = 200, body = ReservationView), (status = 404, body = ErrorBody)))]
pub async fn get_reservation(
    State(st): State<AppState>,
    P((name, key)): P<(String, String)>,
) -> R<Json<ReservationView>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        Ok(Json(ReservationView::from(&find_reservation(
            &*st.store, &name, &key,
        )?)))
    })
    .await
}

/// Releases a reservation (any policy). A pod holding the addresses keeps them until its DEL.
#[utoipa::path(delete, path = "/v1/networks/{name}/reservations/{key}", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name"),
        ("key" = String, Path, description = "Identity key, URL-encoded")),
    responses((status = 200, body = ReservationView), (status = 404, body = ErrorBody)))]
pub async fn release_reservation(
    State(st): State<AppState>,
    P((name, key)): P<(String, String)>,
) -> R<Json<ReservationView>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        weft_ipam::fixed::validate_name(&name, "key", &key)?;
        Ipam::new(&*st.store)
            .release_reservation(&name, &key)?
            .map(|r| Json(ReservationView::from(&r)))
            .ok_or_else(|| no_reservation(&name, &key))
    })
    .await
}

/// Reservations of every network (or of `network`).
#[utoipa::path(get, path = "/v1/reservations", tag = TAG_FIXED, security(("bearer" = [])),
    params(NetworkFilter),
    responses((status = 200, body = [ReservationView])))]
pub async fn list_all_reservations(
    State(st): State<AppState>,
    Q(f): Q<NetworkFilter>,
) -> R<Json<Vec<ReservationView>>> {
    blocking(move || {
        let ipam = Ipam::new(&*st.store);
        let mut out = Vec::new();
        for rec in ipam.networks()? {
            if f.network.as_ref().is_some_and(|n| *n != rec.spec.name) {
                continue;
            }
            out.extend(
                ipam.reservations(&rec.spec.name)?
                    .iter()
                    .map(ReservationView::from),
            );
        }
        Ok(Json(out))
    })
    .await
}

/// Address pools of one network.
#[utoipa::path(get, path = "/v1/networks/{name}/pools", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = [AddressPoolView]), (status = 404, body = ErrorBody)))]
pub async fn list_pools(
    State(st): State<AppState>,
    P(name): P<String>,
) -> R<Json<Vec<AddressPoolView>>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        let ps = query::pools(&*st.store, &name)?;
        Ok(Json(ps.iter().map(AddressPoolView::from).collect()))
    })
    .await
}

/// Creates an address pool (fixed addresses a Deployment's pods take from).
#[utoipa::path(post, path = "/v1/networks/{name}/pools", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name")),
    request_body = AddressPoolInput,
    responses((status = 201, body = AddressPoolView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_pool(
    State(st): State<AppState>,
    P(name): P<String>,
    JsonBody(body): JsonBody<AddressPoolInput>,
) -> R<(StatusCode, Json<AddressPoolView>)> {
    blocking(move || {
        check_network_name("name", &name)?;
        let p = query::create_pool(&*st.store, &name, &body.name, &body.addresses)?;
        Ok((StatusCode::CREATED, Json(AddressPoolView::from(&p))))
    })
    .await
}

/// One address pool.
#[utoipa::path(get, path = "/v1/networks/{name}/pools/{pool}", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name"),
        ("pool" = String, Path, description = "Pool name, URL-encoded")),
    responses((status = 200, body = AddressPoolView), (status = 404, body = ErrorBody)))]
pub async fn get_pool(
    State(st): State<AppState>,
    P((name, pool)): P<(String, String)>,
) -> R<Json<AddressPoolView>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        weft_ipam::fixed::validate_name(&name, "pool", &pool)?;
        Ipam::new(&*st.store)
            .pool(&name, &pool)?
            .map(|p| Json(AddressPoolView::from(&p)))
            .ok_or_else(|| no_pool(&name, &pool))
    })
    .await
}

/// Releases an address pool: its free addresses are freed; pods keep theirs until DEL.
#[utoipa::path(delete, path = "/v1/networks/{name}/pools/{pool}", tag = TAG_FIXED, security(("bearer" = [])),
    params(("name" = String, Path, description = "Network name"),
        ("pool" = String, Path, description = "Pool name, URL-encoded")),
    responses((status = 200, body = AddressPoolView), (status = 404, body = ErrorBody)))]
pub async fn release_pool(
    State(st): State<AppState>,
    P((name, pool)): P<(String, String)>,
) -> R<Json<AddressPoolView>> {
    blocking(move || {
        stored_network(&*st.store, &name)?;
        weft_ipam::fixed::validate_name(&name, "pool", &pool)?;
        query::release_pool(&*st.store, &name, &pool)?
            .map(|p| Json(AddressPoolView::from(&p)))
            .ok_or_else(|| no_pool(&name, &pool))
    })
    .await
}

// ---------------------------------------------------------------- addresses

/// Who holds an address: network, handle, node, container, pod, since when, and the
/// reservation or pool it belongs to. 404 naming the address when nobody holds it.
#[utoipa::path(get, path = "/v1/ips/{ip}", tag = TAG_ADDR, security(("bearer" = [])),
    params(("ip" = String, Path, description = "An IPv4 or IPv6 address"), NetworkFilter),
    responses((status = 200, body = IpInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn lookup_ip(
    State(st): State<AppState>,
    P(ip): P<String>,
    Q(f): Q<NetworkFilter>,
) -> R<Json<IpInfo>> {
    let addr: IpAddr = ip.parse().map_err(|_| {
        ApiError::bad(
            "ip",
            format!("{ip:?} is not an IP address (e.g. 198.18.0.5 or fd00::5)"),
        )
    })?;
    blocking(move || {
        let found = query::lookup(&*st.store, addr, f.network.as_deref())?;
        let Some(hit) = found.iter().find(|l| l.holder.is_some()) else {
            let msg = match found.first() {
                None => format!("address {addr} is in no network's pools"),
                Some(l) => match l.cooling_until {
                    Some(t) => format!(
                        "address {addr} is free in network {:?} (released at {}, cooling down until {t})",
                        l.network,
                        l.released_at.unwrap_or(0)
                    ),
                    None => format!("address {addr} is free in network {:?}", l.network),
                },
            };
            return Err(ApiError::not_found(msg));
        };
        let mut info = IpInfo {
            address: addr,
            network: hit.network.clone(),
            state: String::new(),
            block: hit.block,
            block_node: hit.block_node.clone(),
            handle: None,
            node: None,
            container_id: None,
            ifname: None,
            pod: None,
            since: None,
            fixed: None,
            reservation: None,
            pool: None,
        };
        match &hit.holder {
            Some(Holder::Allocated { handle, allocation }) => {
                info.state = "allocated".into();
                info.handle = Some(handle.clone());
                if let Some(a) = allocation {
                    info.node = Some(a.node.clone());
                    info.container_id = Some(a.container_id.clone());
                    info.ifname = Some(a.ifname.clone());
                    info.pod = a.pod.clone();
                    info.since = Some(a.created_at);
                    info.fixed = a.fixed.as_ref().map(FixedInfo::from);
                    if let Some(weft_ipam::FixedRef::Pool { name }) = &a.fixed {
                        info.pool = Some(name.clone());
                    }
                    if let Some(weft_ipam::FixedRef::Reservation { key, .. }) = &a.fixed {
                        info.reservation = find_reservation(&*st.store, &hit.network, key)
                            .ok()
                            .map(|r| ReservationView::from(&r));
                    }
                }
            }
            Some(Holder::Reserved { key, reservation }) => {
                info.state = "reserved".into();
                info.handle = Some(weft_ipam::fixed::reserved_owner(key));
                info.reservation = reservation.as_ref().map(ReservationView::from);
                info.since = reservation.as_ref().map(|r| r.updated_at);
                info.fixed = Some(FixedInfo {
                    kind: "reservation".into(),
                    name: key.clone(),
                    policy: reservation
                        .as_ref()
                        .map(|r| policy_str(r.identity.policy).to_string()),
                });
            }
            Some(Holder::Pooled { pool }) => {
                info.state = "pooled".into();
                info.handle = Some(weft_ipam::fixed::pool_owner(pool));
                info.pool = Some(pool.clone());
                info.fixed = Some(FixedInfo {
                    kind: "pool".into(),
                    name: pool.clone(),
                    policy: None,
                });
            }
            None => {}
        }
        Ok(Json(info))
    })
    .await
}

/// Allocations, filtered by network, node and pod.
#[utoipa::path(get, path = "/v1/allocations", tag = TAG_ADDR, security(("bearer" = [])),
    params(AllocationQuery),
    responses((status = 200, body = [AllocationView])))]
pub async fn list_allocations(
    State(st): State<AppState>,
    Q(q): Q<AllocationQuery>,
) -> R<Json<Vec<AllocationView>>> {
    blocking(move || {
        let ipam = Ipam::new(&*st.store);
        let names: Vec<String> = match &q.network {
            Some(n) => {
                check_network_name("network", n)?;
                vec![n.clone()]
            }
            None => ipam.networks()?.into_iter().map(|r| r.spec.name).collect(),
        };
        let mut out = Vec::new();
        for n in names {
            for a in query::allocations(&*st.store, &n)? {
                if q.node.as_ref().is_some_and(|x| *x != a.node)
                    || q.pod.as_ref().is_some_and(|x| Some(x) != a.pod.as_ref())
                {
                    continue;
                }
                out.push(AllocationView::from(&a));
            }
        }
        Ok(Json(out))
    })
    .await
}

// ---------------------------------------------------------------- nodes

fn node_views(store: &dyn Store, only: Option<&str>) -> R<Vec<NodeView>> {
    let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
    let blank = |name: &str| NodeView {
        name: name.to_string(),
        registered: false,
        underlay_ip: None,
        underlay_subnet: None,
        mode: None,
        networks: Vec::new(),
        record: None,
        blocks: Vec::new(),
        allocations: 0,
        addresses: 0,
    };
    let wanted = |n: &str| only.is_none_or(|o| o == n);
    let prefix = weft_ipam::nodes_prefix();
    for kv in store.list(&prefix)? {
        let name = kv.key[prefix.len()..].to_string();
        if !wanted(&name) {
            continue;
        }
        let rec: serde_json::Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let s = |k: &str| rec.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let mut v = blank(&name);
        v.registered = true;
        v.underlay_ip = s("underlayIp");
        v.underlay_subnet = s("underlaySubnet");
        v.mode = s("mode");
        v.networks = rec
            .get("networks")
            .and_then(|n| n.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.record = Some(rec);
        views.insert(name, v);
    }
    let ipam = Ipam::new(store);
    for rec in ipam.networks()? {
        let spec = &rec.spec;
        for b in query::blocks(store, &spec.name)? {
            let Some(node) = b.node.clone().filter(|n| !n.is_empty() && wanted(n)) else {
                continue;
            };
            let size = spec
                .pools
                .iter()
                .find(|p| p.subnet.contains(&b.cidr.network()))
                .map_or(0, |p| p.usable_in(&b.cidr).len() as u64);
            views
                .entry(node.clone())
                .or_insert_with(|| blank(&node))
                .blocks
                .push(NodeBlock {
                    network: spec.name.clone(),
                    cidr: b.cidr,
                    used: b.allocations.len() as u64,
                    size,
                });
        }
        for (node, (allocs, addrs)) in query::allocation_counts(store, &spec.name)? {
            if node.is_empty() || !wanted(&node) {
                continue;
            }
            let v = views.entry(node.clone()).or_insert_with(|| blank(&node));
            v.allocations += allocs;
            v.addresses += addrs;
        }
    }
    Ok(views.into_values().collect())
}

/// Nodes: registered by weftd, or named by blocks or allocations.
#[utoipa::path(get, path = "/v1/nodes", tag = TAG_NODES, security(("bearer" = [])),
    responses((status = 200, body = [NodeView])))]
pub async fn list_nodes(State(st): State<AppState>) -> R<Json<Vec<NodeView>>> {
    blocking(move || Ok(Json(node_views(&*st.store, None)?))).await
}

/// One node with its blocks and allocation counts.
#[utoipa::path(get, path = "/v1/nodes/{name}", tag = TAG_NODES, security(("bearer" = [])),
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub async fn get_node(State(st): State<AppState>, P(name): P<String>) -> R<Json<NodeView>> {
    blocking(move || {
        node_views(&*st.store, Some(&name))?
            .into_iter()
            .next()
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "node {name:?} is not registered and holds no block or allocation"
                ))
            })
    })
    .await
}

// ---------------------------------------------------------------- check

/// Compares the store with the nodes' reports (weftctl check).
#[utoipa::path(get, path = "/v1/check", tag = TAG_OPS, security(("bearer" = [])),
    params(CheckQuery),
    responses((status = 200, description = "The check report", body = Object)))]
pub async fn check(
    State(st): State<AppState>,
    Q(q): Q<CheckQuery>,
) -> R<Json<weft_check::CheckReport>> {
    let mut opts = weft_check::CheckOptions::default();
    if let Some(g) = q.grace_seconds {
        opts.grace_seconds = g;
    }
    blocking(move || Ok(Json(weft_check::check(&*st.store, &opts)?))).await
}

/// The repair plan (`yes: false`), or the repairs carried out (`yes: true`). Admin token.
#[utoipa::path(post, path = "/v1/check/repair", tag = TAG_OPS, security(("bearer" = [])),
    request_body = RepairInput,
    responses((status = 200, body = RepairResult), (status = 403, body = ErrorBody)))]
pub async fn repair(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<RepairInput>,
) -> R<Json<RepairResult>> {
    let mut opts = weft_check::CheckOptions::default();
    if let Some(g) = body.grace_seconds {
        opts.grace_seconds = g;
    }
    blocking(move || {
        let report = weft_check::check(&*st.store, &opts)?;
        let outcomes = if body.yes {
            weft_check::repair(&*st.store, &report.findings, &opts)?
        } else {
            Vec::new()
        };
        Ok(Json(RepairResult {
            applied: body.yes,
            findings: report.findings,
            outcomes,
        }))
    })
    .await
}

/// Unknown paths.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such resource: {} (GET /openapi.json lists the API)",
        uri.path()
    ))
}
