//! `VirtualKeys`: authenticate the client's key, attach its grants and limits.
//!
//! Reads the key from `Authorization: Bearer <key>` or `x-api-key: <key>`.
//! Keys look like `tg-<id>-<secret>`: the public id is what logs, spend
//! records and metrics show; only a SHA-256 of id and secret is stored
//! ([`KeyHash`]), compared in constant time. Refusals are 401, each with its
//! own `metadata.reason` and a message that says what to do, and none echoes
//! the key, its secret or its hash:
//!
//! | reason | when |
//! |---|---|
//! | `missing_key` | no `Authorization` or `x-api-key` header |
//! | `malformed_key` | not `Bearer <key>`, or not of the form `tg-<id>-<secret>` |
//! | `unknown_key` | no such key (deleted, mistyped, wrong secret) |
//! | `key_expired` | past its expiry |
//! | `key_revoked` | blocked, or its team blocked |
//!
//! The inner service receives `Request<`[`Identified`](crate::read_request::Identified)`<`[`Key`]`, B>>`; after
//! [`ReadRequest`](crate::read_request::ReadRequest) that is
//! `Request<Parsed<Key>>` with the key at `req.body().identity()`. [`Key`]
//! is an `Arc` snapshot: id, alias, team, grants, rpm/tpm limits, budgets,
//! fair-queuing weight, metadata, expiry.
//!
//! The hot path never waits on a database: a [`Keyring`] holds every key in
//! memory and is written through to a [`KeyStore`] ([`MemoryStore`], or
//! `SqliteStore` with the `sqlite` feature, `PostgresStore` with `postgres`)
//! by its write methods (which the admin API calls), so a revoke or an update
//! takes effect for the very next request on this process. Changes made by
//! other replicas reach memory through [`Keyring::apply`], fed by the
//! store's change feed (`PostgresStore::follow`).
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tollgate::keys::{Key, Keyring, MemoryStore, NewKey, VirtualKeysLayer};
//! use tollgate::read_request::Identified;
//! use tollgate::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
//! let (key, _record) = keyring.generate(NewKey::default()).await.unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(VirtualKeysLayer::new(keyring))
//!     .service(service_fn(|req: Request<Identified<Key, Body>>| async move {
//!         Ok::<_, Error>(Response::new(Body::full(req.body().identity.id().to_owned())))
//!     }));
//! let req = Request::get("/").header("authorization", format!("Bearer {key}"));
//! let res = svc.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let refused = svc.oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap_err();
//! assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```

mod key;
mod keyring;
mod layer;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod record;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;
pub mod token;

/// The future of [`VirtualKeys`]: the inner service's, or an immediate 401
/// (the same type as [`ModelAccess`](crate::access::ModelAccess)'s).
pub use crate::access::ResponseFuture;
pub use key::{Customer, Key, Team, User};
pub use keyring::{
    Change, CustomerUpdate, KeyUpdate, Keyring, KeyringBuilder, NewCustomer, NewKey, NewTeam,
    NewUser, StaticKey, TeamUpdate, TeamsDeleted, UserUpdate, WeakKeyring, presented_key,
};
pub use layer::{VirtualKeys, VirtualKeysLayer};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use record::{
    Budget, BudgetPeriod, CustomerRecord, KeyRecord, Limits, MemberRole, Patch, Source, TeamMember,
    TeamRecord, UserRecord,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use store::{KeyStore, MemoryStore, Snapshot, StoreError};
pub use token::KeyHash;
