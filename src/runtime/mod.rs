//! The container runtime of the node agent: images and containers, with no knowledge of
//! Kubernetes objects (the kubelet maps pods onto it).
//!
//! Owns: the image store under `<data-dir>/agent/images` ([`images`]), the OCI runtime spec
//! built from a [`spec::ContainerConfig`] ([`spec`]), the `kedge shim` process that runs one
//! container on youki's libcontainer and the agent's client for it ([`shim`]), pod and
//! container cgroups and their stats ([`cgroups`]), and network namespaces ([`netns`]).
//!
//! Must not touch: the API (no kube client here), pod networking beyond loopback (the
//! network issue's CNI), or Kubernetes types.

pub mod cgroups;
pub mod images;
pub mod netns;
pub mod shim;
pub mod spec;
