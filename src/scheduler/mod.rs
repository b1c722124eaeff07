//! The scheduler's decision, as pure code over typed objects: given a pending pod and a
//! [`Snapshot`] of nodes and their bound pods, [`schedule`] picks a node or explains,
//! in upstream kube-scheduler's words, why none fits and whom preemption would evict.
//!
//! The algorithm is pure — no API calls, watches or binding, which belong to the loop
//! that feeds it snapshots and acts on its answers. The pipeline mirrors
//! upstream's default profile: [`filter`] (one function per filter plugin, with
//! [`interpod`] and [`spread`] for the topology-aware ones), [`score`] (weighted, each
//! normalized to 0..=100), [`preemption`] when nothing fits, and [`decide`] tying them
//! together. [`resources`] and [`quantity`] turn resource lists into numbers, and
//! [`selector`] holds the label, node-selector and toleration matching they share.
//!
//! The loop that feeds it lives here too: [`run`] (watches, the decision loop, leader
//! election), [`queue`] (pending pods by priority, with backoff), [`cache`] (the snapshot
//! kept up to date event by event), `bind` and `failure` (the API writes after a
//! decision).
//!
//! The loop keeps one [`Snapshot`] of the cached nodes and pods (with namespace labels
//! and Service/workload selectors when known), calls [`schedule`] per pending pod, and
//! after binding adds the pod to its node with [`NodeInfo::add_pod`] so the next
//! decision sees it. On `Err`, the `Display` text is the
//! `FailedScheduling` event and `PodScheduled` condition message, and
//! [`Preemption::Nominated`] names the node to nominate and the pods to evict.

mod bind;
pub mod cache;
pub mod decide;
mod failure;
pub mod filter;
pub mod interpod;
pub mod preemption;
pub mod quantity;
pub mod queue;
pub mod resources;
pub mod run;
pub mod score;
pub mod selector;
pub mod snapshot;
pub mod spread;

pub use decide::{schedule, Preemption, Unschedulable};
pub use run::run;
pub use snapshot::{NodeInfo, Snapshot};
