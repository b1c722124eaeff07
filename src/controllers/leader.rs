//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! for kube-controller-manager: a candidate takes the Lease once its holder has not renewed
//! it for `leaseDurationSeconds` (timed by this process's clock from when it last saw the
//! record change, so clocks need not agree), the holder renews it and steps down when it
//! cannot renew within the renew deadline.
//!
//! Upstream's defaults (lease 15 s, renew deadline 10 s, retry 2 s) are kept, but the holder
//! renews every [`RENEW_INTERVAL`] rather than every retry period: each renewal is a
//! replicated write, and an idle edge device should write as little as it can.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

/// The Lease the controllers are elected on.
pub const LEASE_NAME: &str = "kedge-controller-manager";
pub const LEASE_NAMESPACE: &str = "kube-system";
/// How long a holder that stopped renewing keeps the Lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps trying to renew before it steps down; shorter than the lease,
/// so that it has stopped before anyone else may take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often candidates look at the Lease, and failed renewals are retried.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// How often the holder renews: leaves two retries before the renew deadline.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// What a candidate last saw of the Lease, and when (by its own clock).
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// The outcome of one look at the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This process holds the Lease (it just took or renewed it).
    Held,
    /// Another holder's Lease has not run out.
    HeldByOther,
}

/// One candidate for the Lease.
pub struct LeaderElector {
    leases: Api<Lease>,
    /// The Lease's name in [`LEASE_NAMESPACE`].
    lease: String,
    identity: String,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// A candidate named `identity` (unique among the servers, stable across restarts so that
    /// a restarted holder takes its Lease back at once).
    pub fn new(client: Client, identity: String) -> LeaderElector {
        LeaderElector::for_lease(client, identity, LEASE_NAME)
    }

    /// A candidate for another component's Lease (`kube-scheduler`), named `lease` in
    /// [`LEASE_NAMESPACE`].
    pub fn for_lease(client: Client, identity: String, lease: &str) -> LeaderElector {
        LeaderElector {
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            lease: lease.to_string(),
            identity,
            observed: None,
        }
    }

    /// Runs `lead()` for as long as this candidate holds the Lease, dropping it when the
    /// Lease is lost, and competes again. Never returns.
    pub async fn run<F, Fut>(mut self, mut lead: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            self.acquire().await;
            tracing::info!(identity = %self.identity, lease = %self.lease, "became the leader; starting");
            let leading = tokio::spawn(lead());
            self.hold().await;
            leading.abort();
            tracing::warn!(identity = %self.identity, lease = %self.lease, "lost the lease; stopped");
        }
    }

    /// Returns once this candidate holds the Lease.
    async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => return,
                Ok(Attempt::HeldByOther) => {}
                Err(error) => {
                    tracing::debug!(%error, lease = %self.lease, "cannot take the lease yet")
                }
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the Lease; returns when it has been lost.
    async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep_until(renewed + RENEW_INTERVAL).await;
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(Attempt::Held) => {
                        renewed = Instant::now();
                        break;
                    }
                    Ok(Attempt::HeldByOther) => return,
                    Err(error) => {
                        tracing::warn!(%error, lease = %self.lease, "renewing the lease failed")
                    }
                }
                if renewed.elapsed() + RETRY_PERIOD >= RENEW_DEADLINE {
                    return;
                }
                tokio::time::sleep(RETRY_PERIOD).await;
            }
        }
    }

    /// One look at the Lease: takes it if it is free or ran out, renews it if held.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.leases.get_opt(&self.lease).await? else {
            let spec = LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.observe(spec)),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let at = match &self.observed {
            Some(seen) if seen.spec == current => seen.at,
            _ => Instant::now(),
        };
        self.observed = Some(Observed {
            spec: current.clone(),
            at,
        });
        let holder = current.holder_identity.as_deref().unwrap_or_default();
        let mine = holder == self.identity;
        let duration = current
            .lease_duration_seconds
            .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
        if !holder.is_empty() && !mine && at.elapsed() < duration {
            return Ok(Attempt::HeldByOther);
        }
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            renew_time: Some(now.clone()),
            acquire_time: if mine {
                current.acquire_time.clone()
            } else {
                Some(now)
            },
            lease_transitions: if mine {
                current.lease_transitions
            } else {
                Some(current.lease_transitions.unwrap_or(0) + 1)
            },
            ..current
        };
        lease.spec = Some(spec.clone());
        // The replace carries the resourceVersion read: a concurrent taker makes it conflict.
        match self
            .leases
            .replace(&self.lease, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(self.observe(spec)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, spec: LeaseSpec) -> Attempt {
        self.observed = Some(Observed {
            spec,
            at: Instant::now(),
        });
        Attempt::Held
    }
}
