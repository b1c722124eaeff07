//! Patches that need to know the shape of a kind: strategic merge patch
//! ([`strategic`]) and server-side apply ([`apply`]), with the field ownership both keep
//! in `metadata.managedFields` ([`managed`], over the field sets of [`fields`]).
//!
//! The shape comes from [`schema`], over a table generated from upstream's OpenAPI
//! documents by `tools/patch-table/generate.py` ([`table`]). Must not touch: storage or
//! HTTP; callers in `rest::update` and `rest::create` read and write the objects.

pub mod apply;
pub mod fields;
pub mod managed;
pub mod schema;
pub mod strategic;
#[rustfmt::skip]
mod table;
