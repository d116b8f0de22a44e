//! Nodes of this cluster in the federation: each Node joins the first Kubernetes pool (by name) whose selector its
//! labels match; pods no placement of ours covers take their requests off their node.

use std::collections::{BTreeMap, HashMap};

use haiyun_api::{ComputePool, GPU_MODEL_LABEL, JOB_UID_LABEL, RUN_LABEL, quantity};
use haiyun_scheduler::model::{Gpu, Health, Node as CoreNode, PoolId};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::fence::NodeFences;
use crate::backend::Inputs;
use crate::index::cluster::{Drain, Holder, reported, taken};
use crate::index::pod::{GPU_RESOURCE, gpus_of, holds_resources, pod_requests};
use crate::index::{Federation, gpu_mask};

/// Node label naming the GPU model as NVIDIA's GPU feature discovery writes it.
const GFD_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Node label with the GPU memory in MiB (GPU feature discovery).
const GFD_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// Node label grouping GPUs of several nodes into one NVLink domain (e.g. an NVL72 rack).
pub const NVLINK_LABEL: &str = "haiyun.io/nvlink-domain";
/// Node label naming its rack.
pub const RACK_LABEL: &str = "haiyun.io/rack";
const DEFAULT_GPU_MEMORY_MIB: u32 = 81_920;

/// The taint an administrator puts on a node that is shut down for good (Kubernetes' non-graceful node shutdown):
/// what ran there is fenced and may run elsewhere.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// Whether an administrator fenced the node.
fn fenced(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE))
}

/// Whether the node is Ready and schedulable (and not fenced).
pub fn usable(node: &Node) -> bool {
    if fenced(node) {
        return false;
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    ready && !cordoned
}

/// The NVLink groups of a node's `count` GPUs as its agent's inventory links them: for each GPU, the lowest index
/// of the GPUs it is linked to, directly or not. `None` when the agent reported no inventory for them.
fn linked(agent: &crate::fleet::NodeView, count: u32) -> Option<Vec<u32>> {
    if count == 0 || (0..count).any(|j| agent.gpus.get(&j).is_none_or(|g| g.uuid.is_empty())) {
        return None;
    }
    let mut root: Vec<u32> = (0..count).collect();
    fn find(root: &mut [u32], i: u32) -> u32 {
        let mut r = i;
        while root[r as usize] != r {
            r = root[r as usize];
        }
        root[i as usize] = r;
        r
    }
    for (j, g) in &agent.gpus {
        for p in g.nvlink_peers.iter().filter(|p| **p < count && *j < count) {
            let (a, b) = (find(&mut root, *j), find(&mut root, *p));
            root[a.max(b) as usize] = a.min(b);
        }
    }
    Some((0..count).map(|j| find(&mut root, j)).collect())
}

fn allocatable(node: &Node, key: &str) -> Option<String> {
    node.status.as_ref()?.allocatable.as_ref()?.get(key).map(|q| q.0.clone())
}

/// The GPUs a node offers as the extended resource.
pub fn gpu_count(node: &Node) -> u32 {
    allocatable(node, GPU_RESOURCE).and_then(|q| q.parse::<u32>().ok()).unwrap_or(0)
}

/// GPUs of a pool held for the other side of a capacity lease, by node name (as the nodes are named here).
#[derive(Debug, Clone, Copy)]
pub enum Hold<'a> {
    /// Nothing held.
    Nothing,
    /// The federation's side: these GPUs are granted to the site; the site's own pods (Haiyun's, of no origin) run
    /// within them.
    Lent(&'a BTreeMap<String, u32>),
    /// The site's side: only these GPUs are granted to it; the federation's pods (of an origin) run on the rest.
    Granted(&'a BTreeMap<String, u32>),
}

impl Hold<'_> {
    /// Whether a foreign pod runs on the other side of the lease.
    fn other_side(self, pod: &k8s_openapi::api::core::v1::Pod) -> bool {
        let labels = pod.labels();
        let origin = labels.contains_key(crate::backend::remote::ORIGIN_LABEL);
        match self {
            Hold::Nothing => false,
            Hold::Lent(_) => !origin && labels.contains_key(JOB_UID_LABEL),
            Hold::Granted(_) => origin,
        }
    }

    /// GPUs held on a node of `count` GPUs beyond the foreign pods counted, where `other` GPUs run on the other
    /// side's pods.
    fn extra(self, node: &str, count: u32, other: u32) -> u32 {
        match self {
            Hold::Nothing => 0,
            Hold::Lent(g) => g.get(node).copied().unwrap_or(0).saturating_sub(other),
            Hold::Granted(g) => count.saturating_sub(g.get(node).copied().unwrap_or(0)).saturating_sub(other),
        }
    }
}

/// What pods no placement of ours covers hold on a node.
#[derive(Debug, Clone, Default)]
struct Foreign {
    cpu: u64,
    mem: u64,
    tasks: u32,
    /// GPUs held at unknown indices.
    gpus: u32,
    /// GPUs held at known indices (pods Haiyun bound once).
    mask: u32,
    /// GPUs held by the pods of the other side of a capacity lease (any indices).
    other: u32,
    /// The pods among them that hold GPUs.
    holders: Vec<Holder>,
}

/// What pods no placement of ours covers (other schedulers' pods, and ours that are terminating or left over) hold,
/// by node.
fn foreign<'a>(
    inputs: &Inputs<'a>,
    dra: &HashMap<String, super::devices::Devices>,
    hold: Hold<'_>,
) -> HashMap<&'a str, Foreign> {
    let mut out: HashMap<&str, Foreign> = HashMap::new();
    for pod in &inputs.objects.pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        if !holds_resources(pod) || inputs.claims.covers(&key, pod.labels().get(RUN_LABEL)) {
            continue;
        }
        let (c, m, g) = pod_requests(pod);
        let e = out.entry(node).or_default();
        e.cpu += c;
        e.mem += m;
        e.tasks += 1;
        if hold.other_side(pod) {
            e.other += g;
        }
        let known = gpus_of(pod);
        // The driver's node advertises no nvidia.com/gpu: a pod asking it holds its GPUs through a claim (counted
        // from the claims), and the GPUs of Haiyun's own earlier pods are in their annotation.
        let unknown = if known.is_empty() && !dra.contains_key(node) { g } else { 0 };
        let mask = gpu_mask(&known);
        e.gpus += unknown;
        e.mask |= mask;
        if mask != 0 || unknown > 0 {
            let job = pod.labels().get(JOB_UID_LABEL).cloned();
            e.holders.push(Holder { pod: key, job, mask, gpus: unknown });
        }
    }
    out
}

/// Marks fenced the nodes of `pools` that our placements use and that an administrator fenced (the out-of-service
/// taint) or deleted, or that their fence holder fenced.
fn mark_fenced(
    pools: &[(PoolId, &ComputePool)],
    inputs: &Inputs<'_>,
    fences: &NodeFences,
    f: &mut Federation,
) {
    let ours: std::collections::HashSet<String> = pools.iter().map(|(_, p)| p.name_any()).collect();
    let nodes: HashMap<String, &Node> =
        inputs.objects.nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
    for (node, pool) in &inputs.claims.pools {
        if !ours.contains(pool) {
            continue;
        }
        match nodes.get(node) {
            None => {
                f.fenced.insert(node.clone(), "was deleted".into());
            }
            Some(n) if fenced(n) => {
                f.fenced.insert(node.clone(), format!("is fenced ({OUT_OF_SERVICE})"));
            }
            Some(n) => {
                if let Some(why) = fences.fenced(n, &inputs.objects.pods) {
                    f.fenced.insert(node.clone(), why);
                }
            }
        }
    }
}

/// Adds the Nodes of `pools`. The GPUs foreign pods hold are never placed on. Cordoned or NotReady nodes stay in
/// (so the jobs running there keep their place) but take nothing new. GPUs follow their node agent's report:
/// unhealthy ones are never placed on, and a GPU the agent does not know, or any GPU of a node whose agent is
/// stale, is unknown. Nodes without an agent take their GPUs as healthy.
/// In a pool whose spec says `granted`, only the GPUs of `hold` (an edge site's capacity leases) are placed on.
pub fn contribute(
    pools: &[(PoolId, &ComputePool)],
    inputs: &Inputs<'_>,
    (hold, fences): (Hold<'_>, &NodeFences),
    f: &mut Federation,
) {
    let selectors: Vec<(PoolId, &BTreeMap<String, String>)> = pools
        .iter()
        .filter_map(|(id, p)| p.spec.backend.kubernetes.as_ref().map(|k| (*id, &k.node_selector)))
        .collect();
    add(&selectors, pools, inputs, (true, hold, fences), f);
}

/// Adds the Nodes in `inputs` to the first of `selectors` they match (as `contribute` says); with `open` false (a
/// cluster that does not answer) they keep what runs on them but take nothing new. The GPUs `hold` holds for the
/// other side of a capacity lease are never placed on (in the pools it applies to: granted ones, or all). Nodes
/// their fence holder fenced (`fences`) are marked so.
pub fn add(
    selectors: &[(PoolId, &BTreeMap<String, String>)],
    pools: &[(PoolId, &ComputePool)],
    inputs: &Inputs<'_>,
    (open_pool, hold, fences): (bool, Hold<'_>, &NodeFences),
    f: &mut Federation,
) {
    mark_fenced(pools, inputs, fences, f);
    let devices = super::devices::by_node(&inputs.objects.slices);
    let foreign = foreign(inputs, &devices, hold);
    let granted: std::collections::HashSet<PoolId> = pools
        .iter()
        .filter(|(_, p)| p.spec.backend.kubernetes.as_ref().is_none_or(|k| k.granted))
        .map(|(id, _)| *id)
        .collect();
    let held = super::devices::held_by_others(&inputs.objects.resource_claims);
    let mut domains: HashMap<String, u32> = HashMap::new();
    let mut racks: HashMap<String, u32> = HashMap::new();
    let mut sorted_nodes: Vec<&Node> = inputs.objects.nodes.iter().map(|n| n.as_ref()).collect();
    sorted_nodes.sort_by_key(|n| n.name_any());
    for node in sorted_nodes {
        let labels = node.labels();
        let Some((pool, _)) =
            selectors.iter().find(|(_, sel)| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        else {
            continue;
        };
        let name = node.name_any();
        let open = open_pool && usable(node);
        let (ours_mask, ours_tasks) = inputs.claims.nodes.get(&name).copied().unwrap_or_default();
        if !open && ours_tasks == 0 {
            continue;
        }
        let mut used = foreign.get(name.as_str()).cloned().unwrap_or_default();
        // GPUs other schedulers' claims hold on a driver's node.
        used.mask |= held.get(&name).copied().unwrap_or(0);
        let cpu = allocatable(node, "cpu").and_then(|q| quantity::milli(&q).ok()).unwrap_or(0);
        let mem = allocatable(node, "memory").and_then(|q| quantity::mib(&q).ok()).unwrap_or(0);
        let max_pods = allocatable(node, "pods").and_then(|q| q.parse::<u32>().ok()).unwrap_or(110);
        // Haiyun's DRA driver, where it serves the node, says what its GPUs are; else the extended resource.
        let dra = devices.get(&name);
        let count = match dra {
            Some(d) => d.count,
            None => allocatable(node, GPU_RESOURCE).and_then(|q| q.parse::<u32>().ok()).unwrap_or(0),
        };
        let count = count.min(haiyun_scheduler::model::MAX_GPUS_PER_NODE as u32);
        if ours_mask != 0 && Drain::clashes(count, ours_mask, &used.holders) {
            let holders = std::mem::take(&mut used.holders);
            f.draining.insert(name.clone(), Drain { count, ours: ours_mask, holders });
        }
        if granted.contains(pool) {
            used.gpus += hold.extra(&name, count, used.other);
        }
        // A label names the model of all the node's GPUs; else each GPU's model from the driver.
        let label_model = labels.get(GPU_MODEL_LABEL).or_else(|| labels.get(GFD_PRODUCT_LABEL));
        let models: Vec<Option<_>> = (0..count as usize)
            .map(|j| {
                let m = label_model.cloned().or_else(|| dra.and_then(|d| d.models.get(j).cloned().flatten()));
                m.and_then(|m| f.cluster.models.intern(&m.to_lowercase()))
            })
            .collect();
        let memory_mib = labels
            .get(GFD_MEMORY_LABEL)
            .and_then(|v| v.parse().ok())
            .or_else(|| dra.and_then(|d| d.memory_mib))
            .unwrap_or(DEFAULT_GPU_MEMORY_MIB);
        // On a node the driver serves, its slice (from its own probe) says which GPUs are healthy, by the slots it
        // numbers (a MIG instance is one): the agent's per-GPU reports do not index those.
        let agent = if dra.is_some() { None } else { inputs.fleet.get(&name) };
        // A label names the domain (e.g. an NVL72 rack); else the driver's or the agent's NVLink links; else the
        // whole node.
        let from_driver: Option<Vec<String>> = dra.and_then(|d| {
            (0..count as usize)
                .map(|j| d.domains.get(j).cloned().flatten().map(|k| format!("dra:{k}")))
                .collect()
        });
        let keys: Vec<String> =
            match (labels.get(NVLINK_LABEL), from_driver, agent.and_then(|a| linked(a, count))) {
                (Some(l), _, _) => vec![l.clone(); count as usize],
                (None, Some(keys), _) => keys,
                (None, None, Some(roots)) => roots.iter().map(|r| format!("node:{name}:{r}")).collect(),
                (None, None, None) => vec![format!("node:{name}"); count as usize],
            };
        let domain_of: Vec<u32> = keys
            .into_iter()
            .map(|k| {
                let next = domains.len() as u32;
                *domains.entry(k).or_insert(next)
            })
            .collect();
        let next = racks.len() as u32;
        let rack = *racks
            .entry(labels.get(RACK_LABEL).cloned().unwrap_or_else(|| format!("node:{name}")))
            .or_insert(next);
        let taken = taken(count, ours_mask, used.mask, used.gpus);
        for j in (0..count).filter(|j| ours_mask & (1 << j) != 0) {
            if let Some(g) = agent.filter(|a| !a.stale).and_then(|a| a.gpus.get(&j)) {
                if g.state == crate::fleet::GpuState::Unhealthy {
                    f.failed_gpus.insert((name.clone(), j), g.reason.clone());
                }
            }
            // The node's GPU driver tainted it (its own probe saw the fault).
            if let Some(why) = dra.and_then(|d| d.taints.get(&j)) {
                f.failed_gpus.entry((name.clone(), j)).or_insert_with(|| format!("GPU driver taint {why}"));
            }
        }
        let tainted = dra.map_or(0, |d| d.tainted);
        // A node whose GPUs' model is not known offers none.
        let gpus = match models.iter().copied().collect::<Option<Vec<_>>>() {
            Some(models) => (0..count)
                .map(|j| {
                    let health = if !open || taken & (1 << j) != 0 {
                        Health::Unknown
                    } else if tainted & (1 << j) != 0 {
                        Health::Unhealthy
                    } else {
                        reported(agent, j)
                    };
                    Gpu {
                        model: models[j as usize],
                        memory_mib,
                        nvlink_domain: domain_of[j as usize],
                        health,
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let max_tasks = if open { max_pods.saturating_sub(used.tasks) } else { ours_tasks };
        f.add_node(CoreNode {
            name,
            pool: *pool,
            rack,
            cpu_milli: cpu.saturating_sub(used.cpu),
            memory_mib: mem.saturating_sub(used.mem),
            gpus,
            max_tasks,
        });
    }
}
