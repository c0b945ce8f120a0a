//! The console's deployments page (`GET /ui/deployments`).

use axum::Extension;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::{Console, Nav, SessionInfo, page};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/deployments", get(show))
}

async fn show(Extension(session): Extension<SessionInfo>) -> Response {
    page(
        "Deployments",
        Nav::Deployments,
        &session,
        html! {},
        html! { p { "This page is not built yet." } },
    )
}
