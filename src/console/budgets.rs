//! The console's budgets page (`GET /ui/budgets`).

use axum::Extension;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::{Console, Nav, SessionInfo, page};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/budgets", get(show))
}

async fn show(Extension(session): Extension<SessionInfo>) -> Response {
    page(
        "Budgets",
        Nav::Budgets,
        &session,
        html! {},
        html! { p { "This page is not built yet." } },
    )
}
