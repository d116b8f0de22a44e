//! What a ResourceClaim's allocation gives this driver on this node: which GPUs, and how much of each.

use k8s_openapi::api::resource::v1::ResourceClaim;

use crate::{CORES, DRIVER, device_index};

/// One GPU (or share of one) allocated to a claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The claim's request it answers.
    pub request: String,
    /// The GPU's index on the node.
    pub index: u32,
    /// Percent of the GPU's compute (100 for a whole GPU).
    pub cores: u32,
    /// The allocation's share id, for a GPU several claims share.
    pub share_id: Option<String>,
}

/// Why a claim cannot be prepared here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// The claim has no allocation yet.
    #[error("claim {0} is not allocated: its scheduler must write status.allocation before the pod is bound")]
    NotAllocated(String),
    /// The claim the kubelet named is not the one in the API server (deleted and made again).
    #[error("claim {claim} has uid {found}, the kubelet asked for {asked}")]
    Uid {
        /// The claim.
        claim: String,
        /// Its uid now.
        found: String,
        /// The uid the kubelet gave.
        asked: String,
    },
    /// A result names a device this driver does not publish.
    #[error(
        "claim {claim} was allocated device {device:?}, which is not a device of this driver (gpu-<slot> or mig-<slot>)"
    )]
    UnknownDevice {
        /// The claim.
        claim: String,
        /// The device.
        device: String,
    },
    /// A consumed capacity is not a percent between 1 and 100.
    #[error(
        "claim {claim}: consumedCapacity {CORES:?} of {device} is {value:?}; it must be a whole percent from 1 to 100"
    )]
    Cores {
        /// The claim.
        claim: String,
        /// The device.
        device: String,
        /// What was given.
        value: String,
    },
}

/// The GPUs `claim` was allocated from this driver's pool `pool` (the node's name).
pub fn grants(claim: &ResourceClaim, uid: &str, pool: &str) -> Result<Vec<Grant>, AllocationError> {
    let key = format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    );
    let found = claim.metadata.uid.clone().unwrap_or_default();
    if found != uid {
        return Err(AllocationError::Uid { claim: key, found, asked: uid.into() });
    }
    let Some(alloc) = claim.status.as_ref().and_then(|s| s.allocation.as_ref()) else {
        return Err(AllocationError::NotAllocated(key));
    };
    let results = alloc.devices.as_ref().and_then(|d| d.results.as_deref()).unwrap_or_default();
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.driver == DRIVER && r.pool == pool) {
        let Some(index) = device_index(&r.device) else {
            return Err(AllocationError::UnknownDevice { claim: key, device: r.device.clone() });
        };
        let cores = match r.consumed_capacity.as_ref().and_then(|c| c.get(CORES)) {
            None => 100,
            Some(q) => match q.0.parse::<u32>() {
                Ok(v) if (1..=100).contains(&v) => v,
                _ => {
                    return Err(AllocationError::Cores {
                        claim: key,
                        device: r.device.clone(),
                        value: q.0.clone(),
                    });
                }
            },
        };
        out.push(Grant { request: r.request.clone(), index, cores, share_id: r.share_id.clone() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(results: serde_json::Value) -> ResourceClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {},
            "status": {"allocation": {"devices": {"results": results}}}
        }))
        .unwrap()
    }

    #[test]
    fn reads_whole_and_shared_gpus_of_this_node_only() {
        let c = claim(json!([
            {"request": "gpus", "driver": DRIVER, "pool": "n1", "device": "gpu-2"},
            {"request": "gpus", "driver": DRIVER, "pool": "n1", "device": "gpu-5",
             "consumedCapacity": {"cores": "50"}, "shareID": "s"},
            {"request": "gpus", "driver": DRIVER, "pool": "n2", "device": "gpu-0"},
            {"request": "nic", "driver": "nic.example.com", "pool": "n1", "device": "gpu-1"},
        ]));
        let g = grants(&c, "u1", "n1").unwrap();
        assert_eq!(g.iter().map(|g| (g.index, g.cores)).collect::<Vec<_>>(), vec![(2, 100), (5, 50)]);
        assert_eq!(g[1].share_id.as_deref(), Some("s"));
    }

    #[test]
    fn refuses_what_it_cannot_prepare() {
        let c = claim(json!([{"request": "gpus", "driver": DRIVER, "pool": "n1", "device": "nic-1"}]));
        assert!(matches!(grants(&c, "u1", "n1"), Err(AllocationError::UnknownDevice { .. })));
        assert!(matches!(grants(&c, "u2", "n1"), Err(AllocationError::Uid { .. })));
        let c = claim(json!([{"request": "gpus", "driver": DRIVER, "pool": "n1", "device": "gpu-1",
                               "consumedCapacity": {"cores": "150"}}]));
        let e = grants(&c, "u1", "n1").unwrap_err().to_string();
        assert!(e.contains("from 1 to 100"), "{e}");
        let mut c = claim(json!([]));
        c.status = None;
        assert!(matches!(grants(&c, "u1", "n1"), Err(AllocationError::NotAllocated(_))));
    }
}
