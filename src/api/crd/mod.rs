//! CustomResourceDefinitions: the resources they define, served through the same REST code
//! as built-in kinds.
//!
//! Owns: turning a definition into registry entries ([`types`]), checking definitions
//! ([`validation`]) and custom objects against their structural schema ([`schema`]), the
//! definition's status and name conflicts ([`status`]), the controller that keeps every
//! server's registry in step with the store and removes a deleted definition's objects
//! ([`controller`]), custom printer columns ([`printer`], over [`jsonpath`]) and the `/scale`
//! subresource of custom resources ([`scale`]).
//!
//! Must not touch: the REST handlers beyond the hooks they call here, or the store except
//! through `Api`.

pub mod controller;
mod fields;
pub mod jsonpath;
pub mod printer;
pub mod scale;
pub mod schema;
pub mod status;
pub mod types;
pub mod validation;

pub use controller::run;
pub use printer::table;
