//! Leader election with a coordination.k8s.io Lease: only the holder schedules and binds.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API call failed.
    #[error("failed to {action} lease {name}: {source}")]
    Api {
        /// What.
        action: &'static str,
        /// The lease.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// A lease this replica competes for. Like client-go, it judges another holder's lease expired by its own
/// monotonic clock: only when the lease has not changed for the lease duration since this replica saw it change,
/// so clock skew between replicas cannot hand out a live lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl Elector {
    /// Competes for lease `name` in `namespace` as `identity`, holding it for `duration` per renewal.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// Tries once to take or renew the lease; returns whether this replica holds it now.
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        let now = jiff::Timestamp::now();
        let err = |action| {
            let name = self.name.clone();
            move |source| LeaseError::Api { action, name, source }
        };
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(err("read"))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err("create")(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let expired = {
            let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match seen.as_ref() {
                Some((v, at)) if *v == version => at.elapsed() > held_for,
                _ => {
                    *seen = Some((version, std::time::Instant::now()));
                    spec.holder_identity.as_deref().is_none_or(str::is_empty)
                }
            }
        };
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(MicroTime(now));
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        // replace() carries the resourceVersion we read: a competing write makes this fail with 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(err("renew")(e)),
        }
    }

    /// Gives the lease up if this replica holds it (no holder, expired at once), so that another replica takes over
    /// without waiting for it to expire; returns whether it was held.
    pub async fn release(&self) -> Result<bool, LeaseError> {
        let err = |action| {
            let name = self.name.clone();
            move |source| LeaseError::Api { action, name, source }
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(err("read"))? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(err("release")(e)),
        }
    }
}
