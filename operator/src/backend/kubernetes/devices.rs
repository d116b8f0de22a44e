//! The GPUs of nodes that Haiyun's DRA driver serves, as its ResourceSlices describe them: how many, their models,
//! memory and NVLink domains (from the node's own probe), and which are tainted unhealthy.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::resource::v1::{Device, ResourceClaim, ResourceSlice};

use super::claims::DRIVER;

/// One node's GPUs by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// How many (indices `0..count`).
    pub count: u32,
    /// Each GPU's model (as the slice's `model` attribute writes it), by index.
    pub models: Vec<Option<String>>,
    /// Device memory of the first GPU, MiB.
    pub memory_mib: Option<u32>,
    /// Each GPU's NVLink domain, by index.
    pub domains: Vec<Option<String>>,
    /// GPUs the driver tainted (bit per index).
    pub tainted: u32,
    /// Why, by index (`key=value` of the first taint).
    pub taints: std::collections::BTreeMap<u32, String>,
}

fn string_attr(d: &Device, key: &str) -> Option<String> {
    d.attributes.as_ref()?.get(key)?.string.clone()
}

/// The slot of a device of Haiyun's driver: `gpu-<slot>` (a whole GPU) or `mig-<slot>` (a MIG instance).
pub fn index(name: &str) -> Option<u32> {
    name.strip_prefix("gpu-").or_else(|| name.strip_prefix("mig-"))?.parse().ok()
}

/// The nodes a slice of Haiyun's driver describes.
pub fn driver_nodes(slices: &[Arc<ResourceSlice>]) -> std::collections::HashSet<String> {
    slices.iter().filter(|s| s.spec.driver == DRIVER).filter_map(|s| s.spec.node_name.clone()).collect()
}

/// The GPUs of each node a slice of Haiyun's driver describes.
pub fn by_node(slices: &[Arc<ResourceSlice>]) -> HashMap<String, Devices> {
    let mut out: HashMap<String, Devices> = HashMap::new();
    for s in slices.iter().filter(|s| s.spec.driver == DRIVER) {
        let Some(node) = s.spec.node_name.clone() else { continue };
        let e = out.entry(node).or_default();
        for d in s.spec.devices.iter().flatten() {
            let Some(i) =
                index(&d.name).filter(|i| (*i as usize) < haiyun_scheduler::model::MAX_GPUS_PER_NODE)
            else {
                continue;
            };
            let n = i as usize + 1;
            if e.models.len() < n {
                e.models.resize(n, None);
                e.domains.resize(n, None);
            }
            e.count = e.count.max(i + 1);
            e.models[i as usize] = string_attr(d, "model");
            e.domains[i as usize] = string_attr(d, "nvlinkDomain");
            if e.memory_mib.is_none() {
                e.memory_mib = d
                    .capacity
                    .as_ref()
                    .and_then(|c| c.get("memory"))
                    .and_then(|c| haiyun_api::quantity::mib(&c.value.0).ok())
                    .map(|m| m as u32);
            }
            if let Some(t) = d.taints.as_ref().and_then(|t| t.first()) {
                e.tainted |= 1 << i;
                e.taints.insert(i, format!("{}={}", t.key, t.value.as_deref().unwrap_or_default()));
            }
        }
    }
    out
}

/// The GPUs of each node that claims other schedulers allocated from Haiyun's driver hold (bit per slot): e.g.
/// kube-scheduler's claim for a plain pod that asks `nvidia.com/gpu`. Claims of Haiyun's own jobs (labelled with
/// their job) are their placements' and not counted here.
pub fn held_by_others(claims: &[Arc<ResourceClaim>]) -> HashMap<String, u32> {
    let mut out: HashMap<String, u32> = HashMap::new();
    for c in claims {
        if c.metadata.labels.as_ref().is_some_and(|l| l.contains_key(haiyun_api::JOB_UID_LABEL)) {
            continue;
        }
        let results = c
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref())
            .and_then(|d| d.results.as_ref());
        for r in results.into_iter().flatten().filter(|r| r.driver == DRIVER) {
            if let Some(i) = index(&r.device).filter(|i| *i < 32) {
                *out.entry(r.pool.clone()).or_default() |= 1 << i;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_count_models_memory_domains_and_taints() {
        let slice: ResourceSlice = serde_json::from_value(json!({
            "metadata": {"name": "n1-gpu.haiyun.io"},
            "spec": {"driver": DRIVER, "nodeName": "n1", "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
              "devices": [
                {"name": "gpu-0", "attributes": {"model": {"string": "A100"}, "nvlinkDomain": {"string": "n1-0"}},
                 "capacity": {"memory": {"value": "42949672960"}}},
                {"name": "mig-1", "attributes": {"model": {"string": "A100-1g.10gb"}, "nvlinkDomain": {"string": "n1-1"}},
                 "taints": [{"key": "gpu.haiyun.io/unhealthy", "value": "XID-79", "effect": "NoSchedule"}]},
              ]}
        }))
        .unwrap();
        let other: ResourceSlice = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "spec": {"driver": "nic.example.com", "nodeName": "n2", "pool": {"name": "n2", "generation": 1, "resourceSliceCount": 1},
              "devices": [{"name": "gpu-0"}]}
        }))
        .unwrap();
        let claim = |labels: serde_json::Value, device: &str| -> Arc<ResourceClaim> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "c", "namespace": "d", "labels": labels},
                    "spec": {},
                    "status": {"allocation": {"devices": {"results": [
                        {"request": "r", "driver": DRIVER, "pool": "n1", "device": device}]}}}
                }))
                .unwrap(),
            )
        };
        let held = held_by_others(&[
            claim(json!({}), "gpu-3"),
            claim(json!({}), "mig-5"),
            claim(json!({"haiyun.io/job-uid": "u"}), "gpu-0"),
        ]);
        assert_eq!(
            held["n1"], 0b10_1000,
            "kube-scheduler's claims hold slots 3 and 5; Haiyun's own are placements"
        );
        let got = by_node(&[Arc::new(slice), Arc::new(other)]);
        assert_eq!(got.len(), 1, "other drivers' slices are not GPUs of Haiyun's");
        let d = &got["n1"];
        assert_eq!(d.count, 2);
        assert_eq!(d.models, vec![Some("A100".into()), Some("A100-1g.10gb".into())]);
        assert_eq!(d.memory_mib, Some(40_960));
        assert_eq!(d.domains[1].as_deref(), Some("n1-1"));
        assert_eq!(d.tainted, 0b10);
        assert_eq!(d.taints[&1], "gpu.haiyun.io/unhealthy=XID-79");
    }
}
