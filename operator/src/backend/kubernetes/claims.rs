//! GPUs through Haiyun's DRA driver: on a node whose driver publishes a ResourceSlice, a task's pod gets a
//! ResourceClaim instead of `nvidia.com/gpu`, and the operator, as the claim's scheduler, writes the allocation of
//! exactly the GPUs (or the share of one) it placed, reserved for the pod, before the pod is bound. The kubelet then
//! has the driver prepare those devices, and the container gets their UUIDs through CDI.

use haiyun_api::ComputeJob;
use k8s_openapi::api::core::v1::{Pod, PodResourceClaim, ResourceClaim as ContainerClaim};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::pods::{PodError, api_err, is_status};

/// The driver's name (its slices' `driver`, its DeviceClass).
pub const DRIVER: &str = "gpu.haiyun.io";
/// The name the pod gives its GPU claim (in `spec.resourceClaims` and the container's `resources.claims`).
pub const POD_CLAIM: &str = "haiyun-gpus";
/// The claim's one request.
const REQUEST: &str = "gpus";
/// The consumable capacity a share takes: percent of the GPU's compute.
const CORES: &str = "cores";

/// The ResourceClaim of a pod.
pub fn claim_name(pod: &str) -> String {
    format!("{pod}-gpus")
}

/// The ResourceSlice the driver publishes for a node.
pub fn slice_name(node: &str) -> String {
    format!("{node}-{DRIVER}")
}

/// The percent of a GPU a share of `fraction` takes (at least 1).
pub fn cores(fraction: f64) -> u32 {
    ((fraction * 100.0).round() as u32).clamp(1, 100)
}

/// The devices of a node Haiyun's driver serves, by slot; `None` when it does not serve the node (no slice).
pub type NodeDevices = Option<std::collections::BTreeMap<u32, SliceDevice>>;

/// The devices the driver's slice offers on `node` (one read of the slice).
pub async fn node_devices(client: &Client, node: &str) -> Result<NodeDevices, PodError> {
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let slice = match slices.get_opt(&slice_name(node)).await {
        Ok(s) => s.filter(|s| s.spec.driver == DRIVER),
        // A cluster without DRA (resource.k8s.io/v1 not served): GPUs stay an extended resource.
        Err(e) if is_status(&e, 404) => None,
        Err(e) => return Err(api_err("read ResourceSlice", slice_name(node))(e)),
    };
    Ok(slice.map(|s| {
        s.spec
            .devices
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| {
                let slot = super::devices::index(&d.name)?;
                Some((slot, (d.name, d.allow_multiple_allocations == Some(true))))
            })
            .collect()
    }))
}

/// The node's devices at the slots placed for `pod`.
pub fn pick(
    devices: &std::collections::BTreeMap<u32, SliceDevice>,
    pod: &str,
    node: &str,
    slots: &[u32],
) -> Result<Vec<SliceDevice>, PodError> {
    slots
        .iter()
        .map(|s| {
            devices.get(s).cloned().ok_or_else(|| PodError::Devices {
                pod: pod.into(),
                why: format!("the GPU driver of {node} no longer offers device {s}"),
            })
        })
        .collect()
}

/// Makes a pod take its GPUs through its claim: the claim in `spec.resourceClaims`, on its first container, and
/// no `nvidia.com/gpu` extended resource (the driver owns the node's GPUs).
pub fn attach(pod: &mut Pod) {
    let name = pod.name_any();
    let Some(spec) = pod.spec.as_mut() else { return };
    let claims = spec.resource_claims.get_or_insert_with(Vec::new);
    if !claims.iter().any(|c| c.name == POD_CLAIM) {
        claims.push(PodResourceClaim {
            name: POD_CLAIM.into(),
            resource_claim_name: Some(claim_name(&name)),
            ..Default::default()
        });
    }
    if let Some(c) = spec.containers.first_mut() {
        let res = c.resources.get_or_insert_with(Default::default);
        for map in [res.requests.as_mut(), res.limits.as_mut()].into_iter().flatten() {
            map.remove(crate::index::pod::GPU_RESOURCE);
        }
        let list = res.claims.get_or_insert_with(Vec::new);
        if !list.iter().any(|c| c.name == POD_CLAIM) {
            list.push(ContainerClaim { name: POD_CLAIM.into(), ..Default::default() });
        }
    }
}

/// The claim of a pod for `count` whole GPUs, or one share of `cores` percent; owned by the pod, so it goes with it.
pub fn claim_for(pod: &Pod, count: u32, share: Option<u32>) -> Result<ResourceClaim, serde_json::Error> {
    let mut exactly = json!({ "deviceClassName": DRIVER, "allocationMode": "ExactCount", "count": count });
    if let Some(c) = share {
        exactly["count"] = json!(1);
        exactly["capacity"] = json!({ "requests": { CORES: c.to_string() } });
    }
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": claim_name(&pod.name_any()),
            "namespace": pod.namespace(),
            "labels": pod.labels(),
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid(),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": { "devices": { "requests": [{ "name": REQUEST, "exactly": exactly }] } },
    }))
}

/// A device of the driver's slice: its name, and whether several claims may share it (a whole GPU; a MIG
/// instance may not).
pub type SliceDevice = (String, bool);

/// The claim's status: these devices of `node` (a shareable one taking `share` percent, or all of it), reserved
/// for the pod.
pub fn allocation(
    node: &str,
    devices: &[SliceDevice],
    share: Option<u32>,
    claim_uid: &str,
    pod: &Pod,
) -> serde_json::Value {
    let cores = share.unwrap_or(100).to_string();
    let results: Vec<_> = devices
        .iter()
        .map(|(name, shared)| {
            let mut r = json!({ "request": REQUEST, "driver": DRIVER, "pool": node, "device": name });
            if *shared {
                r["consumedCapacity"] = json!({ CORES: cores });
                r["shareID"] = json!(claim_uid);
            }
            r
        })
        .collect();
    json!({ "status": {
        "allocation": {
            "devices": { "results": results },
            "nodeSelector": { "nodeSelectorTerms": [{ "matchFields": [{
                "key": "metadata.name", "operator": "In", "values": [node] }] }] },
        },
        "reservedFor": [{ "resource": "pods", "name": pod.name_any(), "uid": pod.uid() }],
    }})
}

/// Creates the pod's claim if missing and allocates it to the task's devices of `node`, reserved for the pod; an
/// allocation already there for this pod is left as it is.
pub async fn ensure(
    client: &Client,
    job: &ComputeJob,
    pod: &Pod,
    node: &str,
    devices: &[SliceDevice],
    share: Option<u32>,
) -> Result<(), PodError> {
    let ns = pod.namespace().unwrap_or_default();
    let name = claim_name(&pod.name_any());
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &ns);
    let count = u32::try_from(devices.len()).unwrap_or(u32::MAX);
    let want =
        claim_for(pod, count, share).map_err(|source| PodError::Claim { claim: name.clone(), source })?;
    let claim = match api.create(&PostParams::default(), &want).await {
        Ok(c) => c,
        Err(e) if is_status(&e, 409) => api.get(&name).await.map_err(api_err("read ResourceClaim", &name))?,
        Err(e) => return Err(api_err("create ResourceClaim", &name)(e)),
    };
    let owner = claim.owner_references().first().map(|o| o.uid.clone());
    if owner != pod.uid() {
        // Left by an earlier pod of the same name: it goes, and the next round makes it anew.
        let _ = api.delete(&name, &Default::default()).await;
        let why = format!("claim {name} of an earlier pod of that name is being deleted");
        return Err(PodError::Devices { pod: pod.name_any(), why });
    }
    let reserved = claim.status.as_ref().and_then(|s| s.reserved_for.as_ref()).is_some_and(|r| !r.is_empty());
    if reserved {
        return Ok(());
    }
    let status = allocation(node, devices, share, &claim.uid().unwrap_or_default(), pod);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.map_err(api_err(
        "allocate ResourceClaim",
        format!("{ns}/{name} of {}", crate::index::job::key(job)),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "train-0", "namespace": "ml", "uid": "0c7b1d8e-0000-4000-8000-000000000001",
                         "labels": {"haiyun.io/run": "0"}},
            "spec": {"containers": [{"name": "c", "resources": {
                "requests": {"nvidia.com/gpu": "2", "cpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn an_attached_pod_takes_its_gpus_through_its_claim_only() {
        let mut p = pod();
        attach(&mut p);
        attach(&mut p);
        let spec = p.spec.unwrap();
        let claims = spec.resource_claims.unwrap();
        assert_eq!(claims.len(), 1, "attaching twice adds nothing");
        assert_eq!(claims[0].resource_claim_name.as_deref(), Some("train-0-gpus"));
        let res = spec.containers[0].resources.clone().unwrap();
        assert!(!res.requests.unwrap().contains_key("nvidia.com/gpu"));
        assert!(!res.limits.unwrap().contains_key("nvidia.com/gpu"));
        assert_eq!(res.claims.unwrap()[0].name, POD_CLAIM);
    }

    #[test]
    fn a_claim_asks_whole_gpus_or_a_share_and_its_allocation_names_the_placed_devices() {
        let whole = serde_json::to_value(claim_for(&pod(), 2, None).unwrap()).unwrap();
        let ex = &whole["spec"]["devices"]["requests"][0]["exactly"];
        assert_eq!(ex["count"], 2);
        assert!(ex.get("capacity").is_none());
        assert_eq!(whole["metadata"]["ownerReferences"][0]["uid"], "0c7b1d8e-0000-4000-8000-000000000001");
        let share = serde_json::to_value(claim_for(&pod(), 1, Some(50)).unwrap()).unwrap();
        assert_eq!(share["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"]["cores"], "50");
        let placed = [("gpu-2".to_string(), true), ("mig-5".to_string(), false)];
        let st = allocation("n1", &placed, None, "u", &pod());
        let results = st["status"]["allocation"]["devices"]["results"].as_array().unwrap();
        let devices: Vec<&str> = results.iter().map(|r| r["device"].as_str().unwrap()).collect();
        assert_eq!(devices, vec!["gpu-2", "mig-5"]);
        assert_eq!(results[0]["pool"], "n1");
        assert_eq!(results[0]["consumedCapacity"]["cores"], "100");
        assert!(results[1].get("consumedCapacity").is_none(), "a MIG instance is taken whole, not shared");
        assert_eq!(st["status"]["reservedFor"][0]["name"], "train-0");
        assert_eq!(cores(0.5), 50);
        assert_eq!(cores(0.001), 1);
    }
}
