//! The console's keys page (`GET /ui/keys`).

use axum::Extension;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::{Console, Nav, SessionInfo, page};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/keys", get(show))
}

async fn show(Extension(session): Extension<SessionInfo>) -> Response {
    page(
        "Keys",
        Nav::Keys,
        &session,
        html! {},
        html! { p { "This page is not built yet." } },
    )
}
