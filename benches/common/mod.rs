//! What more than one bench needs.

use std::hint::black_box;

use tollgate::budget::{
    SpendFuture, SpendPage, SpendQuery, SpendRecord, SpendStore, SpendTotals, Timestamp,
};

/// A spend store that drops every batch: the layer's and the hand-off's
/// cost, not storage's.
pub struct Discard;

impl SpendStore for Discard {
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
        drop(black_box(batch));
        Box::pin(std::future::ready(Ok(())))
    }
    /// Without the default's copy of the batch (a store's own cost: the
    /// SQL stores copy or encode it on their way to the database).
    fn write_once<'a>(&'a self, batch: &'a [SpendRecord], _token: u128) -> SpendFuture<'a, ()> {
        black_box(batch);
        Box::pin(std::future::ready(Ok(())))
    }
    fn query(&self, _q: SpendQuery) -> SpendFuture<'_, SpendPage> {
        Box::pin(std::future::ready(Ok(SpendPage::default())))
    }
    fn totals(&self, _since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
        Box::pin(std::future::ready(Ok(SpendTotals::default())))
    }
}
