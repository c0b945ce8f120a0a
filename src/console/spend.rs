//! The console's spend page (`GET /ui/spend`).

use axum::Extension;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::{Console, Nav, SessionInfo, page};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/spend", get(show))
}

async fn show(Extension(session): Extension<SessionInfo>) -> Response {
    page(
        "Spend",
        Nav::Spend,
        &session,
        html! {},
        html! { p { "This page is not built yet." } },
    )
}
