//! The node's GPUs as a DRA ResourceSlice: one device per GPU with its UUID, model, memory, NVLink domain and NUMA
//! node as attributes, its compute as a consumable capacity that shares may split, and a taint while it is unhealthy.

use std::collections::BTreeMap;

use haiyun_agent::health::Health;
use haiyun_agent::probe::GpuInfo;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::{CORES, DRIVER, MEMORY, slots};

/// The taint key of a GPU that must not take work.
pub const UNHEALTHY_TAINT: &str = "gpu.haiyun.io/unhealthy";

/// Why a slice could not be published.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// The API server refused or could not be reached.
    #[error("failed to publish ResourceSlice {name}: {source}")]
    Publish {
        /// The slice.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// The slice built is not a ResourceSlice (a bug).
    #[error("failed to build ResourceSlice {name}: {source}")]
    Build {
        /// The slice.
        name: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The slice's name for a node.
pub fn name(node: &str) -> String {
    format!("{node}-{DRIVER}")
}

/// The short model name in a product name, as Haiyun's GPU model labels write it: `NVIDIA H100 80GB HBM3` → `H100`,
/// `NVIDIA A100-SXM4-80GB` → `A100`, `Tesla T4` → `T4`.
pub fn model(product: &str) -> String {
    let word = product.split_whitespace().nth(1).unwrap_or(product);
    word.split('-').next().unwrap_or(word).to_string()
}

/// For each GPU, the lowest index of the GPUs linked to it over NVLink, directly or not.
fn domains(gpus: &[GpuInfo]) -> BTreeMap<u32, u32> {
    let mut root: BTreeMap<u32, u32> = gpus.iter().map(|g| (g.index, g.index)).collect();
    fn find(root: &BTreeMap<u32, u32>, mut i: u32) -> u32 {
        while let Some(&r) = root.get(&i).filter(|r| **r != i) {
            i = r;
        }
        i
    }
    for g in gpus {
        let peers: Vec<u32> = g.nvlink_peers.iter().copied().filter(|p| root.contains_key(p)).collect();
        for p in &peers {
            let (a, b) = (find(&root, g.index), find(&root, *p));
            root.insert(a.max(b), a.min(b));
        }
    }
    gpus.iter().map(|g| (g.index, find(&root, g.index))).collect()
}

/// A taint value from a health reason: a label value (letters, digits, `-`, `_`, `.`; at most 63).
fn taint_value(reason: &str) -> String {
    let v: String = reason
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .collect();
    let v: String = v.chars().take(63).collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The slice of `node` (whose Node has uid `node_uid`, its owner) for these GPUs and their health: a device per
/// whole GPU (shareable by compute percent) and per MIG instance (whole only), each tainted while its GPU is
/// unhealthy.
pub fn build(
    node: &str,
    node_uid: &str,
    gpus: &[GpuInfo],
    health: &BTreeMap<u32, Health>,
) -> Result<ResourceSlice, SliceError> {
    let domain = domains(gpus);
    let parents: BTreeMap<u32, &GpuInfo> = gpus.iter().map(|g| (g.index, g)).collect();
    let devices: Vec<Value> = slots(gpus)
        .into_iter()
        .filter_map(|s| Some((parents.get(&s.parent).copied()?, s)))
        .map(|(g, s)| {
            let model = match &s.mig {
                Some(profile) => format!("{}-{profile}", model(&g.name)),
                None => model(&g.name),
            };
            let mut attrs = json!({
                "uuid": { "string": s.uuid },
                "productName": { "string": g.name },
                "model": { "string": model },
                "index": { "int": s.slot },
                "parentIndex": { "int": g.index },
                "pciBusID": { "string": g.pci_bus_id },
                "migEnabled": { "bool": g.mig_enabled },
                "nvlinkDomain": { "string": format!("{node}-{}", domain.get(&g.index).copied().unwrap_or(g.index)) },
            });
            if let Some(n) = g.numa_node {
                attrs["numaNode"] = json!({ "int": n });
            }
            if let Some(p) = &s.mig {
                attrs["migProfile"] = json!({ "string": p });
            }
            let mut d = json!({
                "name": s.name(),
                "attributes": attrs,
                "capacity": { MEMORY: { "value": s.memory_bytes.to_string() } },
            });
            // A whole GPU may be shared by compute percent; a MIG instance is already a share.
            if s.mig.is_none() {
                d["capacity"][CORES] = json!({ "value": "100", "requestPolicy": {
                    "default": "100", "validRange": { "min": "1", "max": "100", "step": "1" } } });
                d["allowMultipleAllocations"] = json!(true);
            }
            let bad = match health.get(&g.index) {
                Some(Health::Unhealthy(why)) => Some(why.as_str()),
                Some(Health::Unknown(why)) => Some(why.as_str()),
                _ => None,
            };
            if let Some(why) = bad {
                d["taints"] = json!([{ "key": UNHEALTHY_TAINT, "value": taint_value(why), "effect": "NoSchedule" }]);
            }
            d
        })
        .collect();
    let slice = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {
            "name": name(node),
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid }],
        },
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
            "devices": devices,
        }
    });
    serde_json::from_value(slice).map_err(|source| SliceError::Build { name: name(node), source })
}

/// Publishes a slice (server-side apply: the driver owns its fields).
pub async fn publish(client: &kube::Client, slice: &ResourceSlice) -> Result<(), SliceError> {
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let name = slice.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply("haiyun-dra").force(), &Patch::Apply(slice))
        .await
        .map_err(|source| SliceError::Publish { name, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use haiyun_agent::probe::GpuProbe;
    use haiyun_agent::probe::fake::FakeProbe;

    #[test]
    fn mig_instances_are_devices_of_their_own_model_tainted_with_their_gpu() {
        let gpus = FakeProbe::profile("a100-mig").unwrap().inventory().unwrap();
        let mut health: BTreeMap<u32, Health> = (0..4).map(|i| (i, Health::Healthy)).collect();
        health.insert(1, Health::Unhealthy("XID 48".into()));
        let v = serde_json::to_value(build("n1", "u", &gpus, &health).unwrap()).unwrap();
        let devs = v["spec"]["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 16);
        assert_eq!(devs[3]["name"], "mig-3");
        assert_eq!(devs[3]["attributes"]["model"]["string"], "A100-1g.10gb");
        assert_eq!(devs[3]["attributes"]["uuid"]["string"], "MIG-fake-a100-00-3");
        assert_eq!(devs[3]["capacity"]["memory"]["value"], (10u64 << 30).to_string());
        assert!(devs[3].get("allowMultipleAllocations").is_none(), "a MIG instance is not shared further");
        assert!(devs[3].get("taints").is_none());
        assert!(devs[7..14].iter().all(|d| d["taints"][0]["value"] == "XID-48"), "GPU 1's seven instances");
        assert_eq!(devs[14]["name"], "gpu-14");
        assert_eq!(devs[14]["attributes"]["parentIndex"]["int"], 2);
        assert_eq!(devs[14]["attributes"]["model"]["string"], "A100");
    }

    #[test]
    fn models_read_like_the_labels() {
        assert_eq!(model("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(model("NVIDIA A100-SXM4-80GB"), "A100");
        assert_eq!(model("Tesla T4"), "T4");
    }

    #[test]
    fn a_slice_lists_each_gpu_with_its_uuid_domain_and_taint() {
        let gpus = FakeProbe::profile("mixed").unwrap().inventory().unwrap();
        let mut health: BTreeMap<u32, Health> = (0..4).map(|i| (i, Health::Healthy)).collect();
        health.insert(3, Health::Unhealthy("XID 79 (GPU fell off the bus)".into()));
        let s = build("n1", "uid-n1", &gpus, &health).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["spec"]["driver"], DRIVER);
        assert_eq!(v["spec"]["pool"]["name"], "n1");
        let devs = v["spec"]["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 4);
        assert_eq!(devs[1]["name"], "gpu-1");
        assert_eq!(devs[1]["attributes"]["uuid"]["string"], gpus[1].uuid);
        assert_eq!(devs[1]["attributes"]["model"]["string"], "A100");
        let domain = |i: usize| devs[i]["attributes"]["nvlinkDomain"]["string"].as_str().unwrap().to_string();
        assert_eq!(domain(0), domain(1), "linked A100s share a domain");
        assert_ne!(domain(2), domain(3), "unlinked T4s each have their own");
        assert_eq!(devs[1]["capacity"]["cores"]["value"], "100");
        assert!(devs[2].get("taints").is_none());
        assert_eq!(devs[3]["taints"][0]["key"], UNHEALTHY_TAINT);
        assert_eq!(devs[3]["taints"][0]["value"], "XID-79--GPU-fell-off-the-bus");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-n1");
    }
}
