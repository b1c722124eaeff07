//! Image garbage collection (upstream's ImageGCManager): shortly after start and then every
//! `--image-gc-period` (5 min), when the image file system is at least
//! `--image-gc-high-threshold` percent full, the least recently used images that no
//! container uses are removed until usage is down to `--image-gc-low-threshold`.
//!
//! In use: the image of every container the kubelet created (running or exited, static
//! pods' too: their `meta.json`), and every image a pod worker is about to start a
//! container from ([`ImagePins`]). Failures are node events with upstream's reasons:
//! `FreeDiskSpaceFailed` when not enough could be freed, `ImageGCFailed` when a pass fails
//! twice in a row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::controllers::events::EventType;
use crate::runtime::images::{GcReport, ImageError, ImageStore};

use super::node::NodeAgent;
use super::pods;

/// Upstream's event reasons (pkg/kubelet/events).
pub const IMAGE_GC_FAILED: &str = "ImageGCFailed";
pub const FREE_DISK_SPACE_FAILED: &str = "FreeDiskSpaceFailed";

/// The first pass runs this long after start (or after one period, if shorter): the
/// agent has imported its air-gap images and found its containers by then.
const FIRST_PASS_DELAY: Duration = Duration::from_secs(30);

/// When and how far images are collected (`--image-gc-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageGcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub period: Duration,
}

impl Default for ImageGcPolicy {
    /// Upstream's defaults: 85 %, 80 %, every 5 minutes.
    fn default() -> Self {
        ImageGcPolicy {
            high_percent: 85,
            low_percent: 80,
            period: Duration::from_secs(300),
        }
    }
}

/// Image references pod workers are about to start containers from. A pass of garbage
/// collection keeps the images they name, and a worker cannot pin while a pass runs, so an
/// image is never removed between a worker finding it and its container recording it.
#[derive(Clone, Debug, Default)]
pub struct ImagePins {
    inner: Arc<Pins>,
}

#[derive(Debug, Default)]
struct Pins {
    /// Held for writing by a collection pass, for reading while a pin is taken.
    gate: tokio::sync::RwLock<()>,
    references: Mutex<HashMap<String, usize>>,
}

/// Keeps its image from garbage collection until dropped.
#[derive(Debug)]
pub struct ImagePin {
    pins: Arc<Pins>,
    reference: String,
}

impl ImagePins {
    /// Pins `reference` (as the pod spec writes it); waits while a collection pass runs.
    pub async fn pin(&self, reference: &str) -> ImagePin {
        let _gate = self.inner.gate.read().await;
        if let Ok(mut references) = self.inner.references.lock() {
            *references.entry(reference.to_string()).or_default() += 1;
        }
        ImagePin {
            pins: self.inner.clone(),
            reference: reference.to_string(),
        }
    }

    fn references(&self) -> Vec<String> {
        self.inner
            .references
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for ImagePin {
    fn drop(&mut self) {
        if let Ok(mut references) = self.pins.references.lock() {
            if let Some(count) = references.get_mut(&self.reference) {
                *count -= 1;
                if *count == 0 {
                    references.remove(&self.reference);
                }
            }
        }
    }
}

/// One pass, blocking: no pin is taken meanwhile.
fn collect(
    images: &ImageStore,
    pins: &ImagePins,
    agent_dir: &Path,
    policy: ImageGcPolicy,
) -> Result<GcReport, ImageError> {
    let _gate = pins.inner.gate.blocking_write();
    let mut in_use = pods::images_in_use(agent_dir);
    in_use.extend(pins.references());
    images.garbage_collect(&in_use, policy.high_percent, policy.low_percent)
}

/// What runs the collection: the store, the workers' pins, where container records are,
/// and the node (for events).
pub struct ImageGc {
    pub policy: ImageGcPolicy,
    pub images: ImageStore,
    pub pins: ImagePins,
    pub agent_dir: PathBuf,
    pub node: NodeAgent,
}

impl ImageGc {
    /// Collects forever (returns at once when the high threshold is 100: disabled).
    pub async fn run(self) {
        if self.policy.high_percent >= 100 {
            tracing::info!("--image-gc-high-threshold is 100: image garbage collection is off");
            return;
        }
        tokio::time::sleep(self.policy.period.min(FIRST_PASS_DELAY)).await;
        let mut failed_before = false;
        loop {
            match self.pass().await {
                Ok(()) => failed_before = false,
                Err(message) => {
                    // Upstream: the first failure may be stats not being ready yet; only a
                    // repeated one is an event.
                    if failed_before {
                        tracing::error!(error = %message, "image garbage collection failed multiple times in a row");
                        self.node
                            .event(EventType::Warning, IMAGE_GC_FAILED, &message)
                            .await;
                    } else {
                        tracing::warn!(error = %message, "image garbage collection failed once");
                    }
                    failed_before = true;
                }
            }
            tokio::time::sleep(self.policy.period).await;
        }
    }

    async fn pass(&self) -> Result<(), String> {
        let (images, pins, agent_dir, policy) = (
            self.images.clone(),
            self.pins.clone(),
            self.agent_dir.clone(),
            self.policy,
        );
        let report =
            tokio::task::spawn_blocking(move || collect(&images, &pins, &agent_dir, policy))
                .await
                .map_err(|e| format!("image garbage collection stopped: {e}"))?
                .map_err(|e| format!("image garbage collection: {e}"))?;
        if report.to_free > 0 {
            tracing::info!(
                usage = report.usage_percent,
                high_threshold = policy.high_percent,
                low_threshold = policy.low_percent,
                amount_to_free = report.to_free,
                freed = report.freed,
                removed = report.removed.len(),
                "disk usage on the image file system was over the high threshold"
            );
        }
        if report.freed < report.to_free {
            let message = format!(
                "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                report.to_free, report.freed
            );
            self.node
                .event(EventType::Warning, FREE_DISK_SPACE_FAILED, &message)
                .await;
            return Err(message);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pins_count_and_wait_for_a_pass() {
        let pins = ImagePins::default();
        let first = pins.pin("busybox:1.35").await;
        let second = pins.pin("busybox:1.35").await;
        assert_eq!(pins.references(), ["busybox:1.35"]);
        drop(first);
        assert_eq!(pins.references(), ["busybox:1.35"]);
        drop(second);
        assert!(pins.references().is_empty());

        // While a pass holds the gate, a pin waits.
        let gate = pins.inner.gate.write().await;
        let waiting = tokio::spawn({
            let pins = pins.clone();
            async move { pins.pin("other:1").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pins.references().is_empty());
        drop(gate);
        let pin = waiting.await.unwrap();
        assert_eq!(pins.references(), ["other:1"]);
        drop(pin);
    }
}
