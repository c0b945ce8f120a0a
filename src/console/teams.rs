//! The console's teams page (`GET /ui/teams`).

use axum::Extension;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::{Console, Nav, SessionInfo, page};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/teams", get(show))
}

async fn show(Extension(session): Extension<SessionInfo>) -> Response {
    page(
        "Teams",
        Nav::Teams,
        &session,
        html! {},
        html! { p { "This page is not built yet." } },
    )
}
