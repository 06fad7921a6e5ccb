//! Metrics in the Prometheus text format for weftd and weft-api, and the timing reports the
//! `weft` plugin sends to its node's weftd.
//!
//! STUB: the interface weft-api is written against; the implementation lands separately.

use weft_store::Store;

/// The body of weft-api's `GET /metrics` (content type
/// `application/openmetrics-text; version=1.0.0; charset=utf-8`): pool size, used and free per
/// network and node read from the store at scrape time, plus the API's own counters.
pub fn render_api(_store: &dyn Store) -> Result<String, weft_store::StoreError> {
    Ok("# EOF\n".to_string())
}
