//! Users and customers (end users) over the admin API, with LiteLLM's
//! routes and field names.
//!
//! | route | does |
//! |---|---|
//! | `POST /user/new` | creates a user (`user_id`, or one is drawn); with LiteLLM's `auto_create_key` (default `true`) also a key for it, whose `key` the answer shows once |
//! | `POST /user/update` | changes a user: a field set to `null` removes it, a field left out is kept |
//! | `GET /user/info?user_id=` | one user, its keys' ids, its spend and its budget's current period |
//! | `GET /user/list?page=&page_size=` | users, paginated (`page_size` at most 100) |
//! | `POST /user/delete` | `{"user_ids": [...]}`: the users and their keys (as LiteLLM does), all or none |
//! | `POST /customer/new`, `/customer/update` | a customer: `user_id` (the id requests send), `alias`, `blocked`, `max_budget`, `budget_duration` |
//! | `GET /customer/info?end_user_id=` | one customer, its spend and its budget's current period |
//! | `GET /customer/list` | every customer |
//! | `POST /customer/delete` | `{"user_ids": [...]}`, all or none |
//! | `POST /customer/block`, `/customer/unblock` | `{"user_ids": [...]}` |
//!
//! Every `/customer/…` route also answers as `/end_user/…` (LiteLLM's
//! older name). Fields LiteLLM has and tollgate does not implement are
//! accepted at `null` or LiteLLM's default and refused by name otherwise.

use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Admin, Answer, Fields, Params, bad, is_default, number, ok, query, set};
use crate::error::Error;
use crate::keys::record::rfc3339;
use crate::keys::{
    Budget, BudgetPeriod, CustomerRecord, CustomerUpdate, NewCustomer, NewKey, NewUser, UserRecord,
    UserUpdate,
};

/// LiteLLM's user fields tollgate does not implement, and their defaults.
const USER_DEFAULTS: &[(&str, &str)] = &[
    ("models", "[]"),
    ("tpm_limit", "null"),
    ("rpm_limit", "null"),
    ("teams", "[]"),
    ("user_ids", "null"),
    ("duration", "null"),
    ("key_alias", "null"),
    ("sso_user_id", "null"),
    ("organizations", "null"),
    ("prompts", "null"),
];

/// LiteLLM's customer fields tollgate does not implement, and their defaults.
const CUSTOMER_DEFAULTS: &[(&str, &str)] = &[
    ("budget_id", "null"),
    ("allowed_model_region", "null"),
    ("default_model", "null"),
    ("tpm_limit", "null"),
    ("rpm_limit", "null"),
    ("model_max_budget", "{}"),
    ("budget_reset_at", "null"),
    ("object_permission", "null"),
];

const USER_FIELDS: &[&str] = &[
    "user_id",
    "user_email",
    "user_alias",
    "user_role",
    "max_budget",
    "budget_duration",
    "metadata",
    "auto_create_key",
];

const CUSTOMER_FIELDS: &[&str] = &[
    "user_id",
    "alias",
    "blocked",
    "max_budget",
    "budget_duration",
    "metadata",
];

/// The body's fields, checked: `allowed`, and LiteLLM's `defaults` only at
/// their defaults (then dropped).
fn fields(body: &Bytes, allowed: &[&str], defaults: &[(&str, &str)]) -> Result<Fields, Error> {
    let names: Vec<&str> = allowed
        .iter()
        .copied()
        .chain(defaults.iter().map(|(n, _)| *n))
        .collect();
    let mut f = Fields::parse(body, &names)?;
    for (name, default) in defaults {
        match f.0.get(*name) {
            Some(v) if is_default(v, default) => {
                f.0.remove(*name);
            }
            Some(_) => {
                return Err(bad(
                    name,
                    format!(
                        "LiteLLM's field is not supported by this gateway: only null or {default} is accepted"
                    ),
                ));
            }
            None => {}
        }
    }
    Ok(f)
}

fn budget_json(
    a: &Admin,
    m: &mut Map<String, Value>,
    budget: Option<Budget>,
    period: Option<BudgetPeriod>,
) {
    m.insert("max_budget".into(), json!(budget.map(|b| b.max_usd)));
    m.insert(
        "budget_duration".into(),
        json!(period.map(|p| p.to_string())),
    );
    let limits = crate::keys::Limits {
        max_budget: budget.map(|b| b.max_usd),
        budget_period: period,
        ..Default::default()
    };
    m.insert("budget_reset_at".into(), super::budget_reset_at(a, &limits));
}

fn user_json(a: &Admin, u: &UserRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("user_id".into(), json!(u.id));
    m.insert("user_email".into(), json!(u.email));
    m.insert("user_alias".into(), json!(u.alias));
    m.insert("user_role".into(), json!(u.role));
    budget_json(a, &mut m, u.budget(), u.budget_period);
    // LiteLLM's users list their teams; tollgate's teams are the keys'.
    m.insert("teams".into(), json!([]));
    m.insert("metadata".into(), Value::Object(u.metadata.clone()));
    m.insert("created_at".into(), json!(rfc3339(u.created_at)));
    m.insert("updated_at".into(), json!(rfc3339(u.updated_at)));
    m
}

fn customer_json(a: &Admin, c: &CustomerRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("user_id".into(), json!(c.id));
    m.insert("alias".into(), json!(c.alias));
    m.insert("blocked".into(), json!(c.blocked));
    budget_json(a, &mut m, c.budget(), c.budget_period);
    m.insert("metadata".into(), Value::Object(c.metadata.clone()));
    m.insert("created_at".into(), json!(rfc3339(c.created_at)));
    m.insert("updated_at".into(), json!(rfc3339(c.updated_at)));
    m
}

/// Adds `spend` (every record's cost, from the spend store) and `budgets`
/// (the budget's current period, from the ledger) when they are kept.
#[cfg(feature = "budget")]
async fn with_spend(
    a: &Admin,
    m: &mut Map<String, Value>,
    scope: crate::budget::Scope,
    budget: Option<Budget>,
) -> Result<(), Error> {
    use crate::budget::{Limit, Scope, usd_value};
    if let Some(store) = &a.spend.store {
        let totals = store.totals(None).await.map_err(super::spend::unreadable)?;
        let (list, id) = match &scope {
            Scope::User(id) => (&totals.users, id),
            Scope::EndUser(id) => (&totals.end_users, id),
            _ => return Ok(()),
        };
        let spent = list.iter().find(|(k, _)| **k == **id).map_or(0, |e| e.1);
        m.insert("spend".into(), usd_value(spent));
        m.insert("spend_micros".into(), json!(spent));
    }
    let limits: Vec<Limit> = budget
        .and_then(|b| Limit::from_budget(scope, b))
        .into_iter()
        .collect();
    if let Some(budgets) = super::spend::usage_of(a, &limits).await? {
        m.insert("budgets".into(), budgets);
    }
    Ok(())
}

fn ids(f: &Fields, name: &str) -> Result<Vec<String>, Error> {
    match f.0.get(name) {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(&format!("{name}[{i}]"), "must be a string"))
            })
            .collect(),
        _ => Err(bad(name, "is required: a non-empty list of ids")),
    }
}

// ----- users -----

pub(super) async fn user_new(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = fields(&body, USER_FIELDS, USER_DEFAULTS)?;
    let auto_key = match f.0.get("auto_create_key") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("auto_create_key", "must be true or false").into()),
    };
    let new = NewUser {
        id: set(f.string("user_id")?),
        email: set(f.string("user_email")?),
        alias: set(f.string("user_alias")?),
        role: set(f.string("user_role")?),
        max_budget: set(f.usd("max_budget")?),
        budget_period: set(f.period()?),
        metadata: set(f.metadata()?).unwrap_or_default(),
    };
    let u = a.keyring.create_user(new).await?;
    let mut m = user_json(&a, &u);
    if auto_key {
        // LiteLLM's default: a key for the new user, shown once.
        let (key, record) = a
            .keyring
            .generate(NewKey {
                user_id: Some(u.id.clone()),
                ..NewKey::default()
            })
            .await?;
        m.insert("key".into(), json!(key));
        m.insert("key_id".into(), json!(record.id));
        m.insert("token".into(), json!(record.id));
    }
    ok(Value::Object(m))
}

pub(super) async fn user_update(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = fields(&body, USER_FIELDS, USER_DEFAULTS)?;
    if f.0.contains_key("auto_create_key") {
        return Err(bad("auto_create_key", "only /user/new takes it").into());
    }
    let id = f.required("user_id")?;
    let update = UserUpdate {
        email: f.string("user_email")?,
        alias: f.string("user_alias")?,
        role: f.string("user_role")?,
        max_budget: f.usd("max_budget")?,
        budget_period: f.period()?,
        metadata: f.metadata()?,
    };
    let u = a.keyring.update_user(&id, update).await?;
    ok(Value::Object(user_json(&a, &u)))
}

pub(super) async fn user_info(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    let id = q
        .get("user_id")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("user_id", "is required: `GET /user/info?user_id=<id>`"))?;
    let (u, keys) = a.keyring.user_info(id)?;
    #[allow(unused_mut)]
    let mut info = user_json(&a, &u);
    #[cfg(feature = "budget")]
    with_spend(
        &a,
        &mut info,
        crate::budget::Scope::User(u.id.as_str().into()),
        u.budget(),
    )
    .await?;
    let key_objects: Vec<Value> = keys
        .iter()
        .map(|k| json!({"token": k, "key_id": k}))
        .collect();
    ok(json!({"user_id": u.id, "user_info": info, "keys": key_objects, "teams": []}))
}

pub(super) async fn user_list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    for (k, v) in &q {
        match k.as_str() {
            "page" | "page_size" => {}
            // LiteLLM's filters and sorts: only empty here.
            "role" | "user_ids" | "sso_user_ids" | "user_email" | "team" | "sort_by"
            | "sort_order" => {
                if !v.is_empty() {
                    return Err(bad(
                        k,
                        "is not supported by this gateway's /user/list (only empty)",
                    )
                    .into());
                }
            }
            _ => return Err(bad(k, "unknown parameter; use page, page_size").into()),
        }
    }
    let page = number(&q, "page", 1, usize::MAX)?;
    let size = number(&q, "page_size", 25, 100)?;
    let (users, total) = a.keyring.list_users(page, size)?;
    let users: Vec<Value> = users
        .iter()
        .map(|u| Value::Object(user_json(&a, u)))
        .collect();
    ok(json!({
        "users": users,
        "total": total,
        "page": page,
        "page_size": size,
        "total_pages": total.div_ceil(size),
    }))
}

pub(super) async fn user_delete(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["user_ids"])?;
    let users = ids(&f, "user_ids")?;
    let keys = a.keyring.delete_users(&users).await?;
    ok(json!({"deleted_users": users, "deleted_keys": keys}))
}

// ----- customers -----

pub(super) async fn customer_new(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    a.check(&headers)?;
    let f = fields(&body, CUSTOMER_FIELDS, CUSTOMER_DEFAULTS)?;
    let new = NewCustomer {
        id: f.required("user_id")?,
        alias: set(f.string("alias")?),
        blocked: f.blocked()?.unwrap_or(false),
        max_budget: set(f.usd("max_budget")?),
        budget_period: set(f.period()?),
        metadata: set(f.metadata()?).unwrap_or_default(),
    };
    let c = a.keyring.create_customer(new).await?;
    ok(Value::Object(customer_json(&a, &c)))
}

pub(super) async fn customer_update(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    a.check(&headers)?;
    let f = fields(&body, CUSTOMER_FIELDS, CUSTOMER_DEFAULTS)?;
    let id = f.required("user_id")?;
    let update = CustomerUpdate {
        alias: f.string("alias")?,
        blocked: f.blocked()?,
        max_budget: f.usd("max_budget")?,
        budget_period: f.period()?,
        metadata: f.metadata()?,
    };
    let c = a.keyring.update_customer(&id, update).await?;
    ok(Value::Object(customer_json(&a, &c)))
}

pub(super) async fn customer_info(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    let id = q
        .get("end_user_id")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            bad(
                "end_user_id",
                "is required: `GET /customer/info?end_user_id=<id>`",
            )
        })?;
    let c = a.keyring.customer_info(id)?;
    #[allow(unused_mut)]
    let mut info = customer_json(&a, &c);
    #[cfg(feature = "budget")]
    with_spend(
        &a,
        &mut info,
        crate::budget::Scope::EndUser(c.id.as_str().into()),
        c.budget(),
    )
    .await?;
    ok(Value::Object(info))
}

pub(super) async fn customer_list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    if let Some(k) = query(q)?.keys().next() {
        return Err(bad(k, "unknown parameter; /customer/list takes none").into());
    }
    let all: Vec<Value> = a
        .keyring
        .list_customers()?
        .iter()
        .map(|c| Value::Object(customer_json(&a, c)))
        .collect();
    ok(Value::Array(all))
}

pub(super) async fn customer_delete(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["user_ids"])?;
    let customers = ids(&f, "user_ids")?;
    a.keyring.delete_customers(&customers).await?;
    ok(json!({"deleted_customers": customers}))
}

async fn set_customers_blocked(a: Admin, headers: HeaderMap, body: Bytes, blocked: bool) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["user_ids"])?;
    let customers = ids(&f, "user_ids")?;
    for id in &customers {
        a.keyring.customer_info(id)?;
    }
    let mut out = Vec::with_capacity(customers.len());
    for id in &customers {
        let update = CustomerUpdate {
            blocked: Some(blocked),
            ..CustomerUpdate::default()
        };
        out.push(Value::Object(customer_json(
            &a,
            &a.keyring.update_customer(id, update).await?,
        )));
    }
    ok(json!({"blocked_users": out}))
}

pub(super) async fn customer_block(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    set_customers_blocked(a, headers, body, true).await
}

pub(super) async fn customer_unblock(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    set_customers_blocked(a, headers, body, false).await
}
