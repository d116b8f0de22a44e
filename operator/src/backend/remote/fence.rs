//! Policy `fenced`: the operator renews a Lease in the remote cluster every heartbeat; a small holder inside that
//! cluster (`haiyun-operator fence`) deletes the operator's pods there once it has seen no renewal for the Lease's
//! duration, timed on its own monotonic clock. The operator places those jobs elsewhere only after that timeout,
//! their pods' termination grace and a clock-skew margin have passed since its own last renewal, so one job never
//! has two live runs.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::ORIGIN_LABEL;

/// The namespace of the operator's Leases in a remote cluster: its fence Lease (named by its origin) and the capacity
/// leases it grants there.
pub const NAMESPACE: &str = "haiyun-fence";

/// Why a fence step failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// An API call failed.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: kube::Error,
    },
}

fn api(action: &'static str) -> impl FnOnce(kube::Error) -> FenceError {
    move |source| FenceError::Api { action, source }
}

/// Renews this operator's fence Lease (named `origin`) for `duration`, making its namespace first if missing.
pub async fn renew(client: &Client, origin: &str, duration: Duration) -> Result<(), FenceError> {
    let mut lease = Lease::default();
    lease.metadata.name = Some(origin.into());
    lease.metadata.labels = Some([(ORIGIN_LABEL.to_string(), origin.to_string())].into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(origin.into()),
        lease_duration_seconds: Some(duration.as_secs().try_into().unwrap_or(i32::MAX)),
        renew_time: Some(MicroTime(jiff::Timestamp::now())),
        ..LeaseSpec::default()
    });
    apply(client, &lease).await.map_err(api("renew the fence Lease"))
}

/// Writes a Lease of this operator in the namespace `haiyun-fence` (server-side apply), making the namespace first
/// if missing.
pub async fn apply(client: &Client, lease: &Lease) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = lease.name_any();
    let pp = PatchParams::apply("haiyun-operator").force();
    match leases.patch(&name, &pp, &Patch::Apply(lease)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let mut ns = Namespace::default();
            ns.metadata.name = Some(NAMESPACE.into());
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
            leases.patch(&name, &pp, &Patch::Apply(lease)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// What the holder has seen of one Lease.
#[derive(Debug, Default)]
pub struct Watch {
    /// The renewal last seen and when (on this process's monotonic clock).
    last: Option<(String, Instant)>,
    /// Whether it fenced (and keeps deleting what it finds) until the next renewal.
    pub fenced: bool,
}

impl Watch {
    /// Takes in the Lease as read at `now`; returns whether its holder is overdue (no renewal seen for its duration).
    pub fn overdue(&mut self, lease: &Lease, now: Instant) -> bool {
        let duration = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds).unwrap_or(60).max(1) as u64;
        self.silent(lease, now) >= Duration::from_secs(duration)
    }

    /// Takes in the Lease as read at `now`; returns how long since a renewal of it was first seen (zero when this
    /// read is the first, or shows a renewal).
    pub fn silent(&mut self, lease: &Lease, now: Instant) -> Duration {
        let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string());
        let renewed = renewed.unwrap_or_default();
        match &self.last {
            Some((r, at)) if *r == renewed => now.duration_since(*at),
            // First seen, or renewed: the clock starts again (a holder that just started waits a full duration).
            _ => {
                self.last = Some((renewed, now));
                self.fenced = false;
                Duration::ZERO
            }
        }
    }
}

/// Deletes every pod of this origin in the cluster (with its own termination grace); returns how many.
async fn delete_ours(client: &Client, origin: &str) -> Result<usize, FenceError> {
    let all: Api<Pod> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default().labels(&format!("{ORIGIN_LABEL}={origin}")))
        .await
        .map_err(api("list the operator's pods"))?;
    let mut n = 0;
    for p in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
        match pods.delete(&p.name_any(), &DeleteParams::default()).await {
            Ok(_) => n += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api("delete a pod")(e)),
        }
    }
    Ok(n)
}

/// The holder: every `interval`, reads the fence Lease of `origin`; once it is overdue, deletes the origin's pods
/// (and any that appear) until it is renewed again. Runs until the process ends.
pub async fn hold(client: Client, origin: String, interval: Duration) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let mut watch = Watch::default();
    loop {
        match leases.get_opt(&origin).await {
            Ok(Some(lease)) => {
                let was = watch.fenced;
                if watch.overdue(&lease, Instant::now()) {
                    match delete_ours(&client, &origin).await {
                        Ok(n) => {
                            watch.fenced = true;
                            if !was || n > 0 {
                                tracing::warn!(%origin, pods = n, "the operator's fence Lease lapsed: its pods are deleted");
                            }
                        }
                        Err(e) => tracing::warn!(%origin, error = %e, "fencing failed; retrying"),
                    }
                } else if was && !watch.fenced {
                    tracing::info!(%origin, "the operator renews its fence Lease again: fence lifted");
                }
            }
            // No operator has renewed one yet: nothing to guard.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%origin, error = %e, "cannot read the fence Lease (this cluster's API server)")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewed: i64, secs: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: jiff::Timestamp::from_second(renewed).ok().map(MicroTime),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_overdue_only_after_its_duration_without_a_renewal_on_the_holders_clock() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        // First sight starts the clock, whatever the renew time says (clocks of two machines are not compared).
        assert!(!w.overdue(&lease(100, 5), t0));
        assert!(!w.overdue(&lease(100, 5), t0 + Duration::from_secs(4)));
        assert!(w.overdue(&lease(100, 5), t0 + Duration::from_secs(5)));
        w.fenced = true;
        // A renewal restarts the clock and lifts the fence.
        assert!(!w.overdue(&lease(101, 5), t0 + Duration::from_secs(6)));
        assert!(!w.fenced);
        assert!(!w.overdue(&lease(101, 5), t0 + Duration::from_secs(10)));
        assert!(w.overdue(&lease(101, 5), t0 + Duration::from_secs(11)));
    }
}
