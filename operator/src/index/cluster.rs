//! Nodes of this cluster and the ComputePools that select them, as the core's federation.

use std::collections::{BTreeMap, HashMap};

use haiyun_api::quantity;
use haiyun_api::{ComputePool, GPU_MODEL_LABEL, RUN_LABEL};
use haiyun_scheduler::model::{
    Classification, Cluster, Gpu, GpuModels, Health, Node as CoreNode, Pool, PoolKind,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::backend::slurm::SlurmViews;
use crate::fleet::{FleetView, GpuState, NodeView};

/// GPU resource name on nodes and pods.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Node label naming the GPU model as NVIDIA's GPU feature discovery writes it.
const GFD_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Node label with the GPU memory in MiB (GPU feature discovery).
const GFD_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// Node label grouping GPUs of several nodes into one NVLink domain (e.g. an NVL72 rack).
pub const NVLINK_LABEL: &str = "haiyun.io/nvlink-domain";
/// Node label naming its rack.
pub const RACK_LABEL: &str = "haiyun.io/rack";
const DEFAULT_GPU_MEMORY_MIB: u32 = 81_920;

/// The federation as the core sees it, and the names behind its ids.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    /// The core's model.
    pub cluster: Cluster,
    /// ComputePool names by pool id.
    pub pool_names: Vec<String>,
    /// Pools that exist but cannot take work here, with the reason.
    pub unavailable: BTreeMap<String, String>,
    /// Node id by name.
    pub node_ids: HashMap<String, u32>,
    /// Pools that are Slurm clusters (their jobs need a script; their nodes are `<pool>/<node>`).
    pub slurm: std::collections::BTreeSet<u32>,
    /// The longest time limit a pool allows, minutes (Slurm partitions that set one).
    pub time_limits: BTreeMap<u32, u32>,
}

/// Whether the node is Ready and schedulable.
fn usable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    ready && !cordoned
}

/// GPUs held by others: the known ones (`known`), then as many unknown ones as they hold (`unknown`), from the top,
/// never ones our placements hold (`ours`).
pub(super) fn taken(count: u32, ours: u32, known: u32, mut unknown: u32) -> u32 {
    let mut taken = known;
    for j in (0..count).rev() {
        if unknown == 0 {
            break;
        }
        if (ours | taken) & (1 << j) == 0 {
            taken |= 1 << j;
            unknown -= 1;
        }
    }
    taken
}

/// GPU `index`'s health as the node agent reports it.
pub(super) fn reported(agent: Option<&NodeView>, index: u32) -> Health {
    let Some(v) = agent else { return Health::Healthy };
    match v.gpus.get(&index).map(|g| g.state) {
        _ if v.stale => Health::Unknown,
        Some(GpuState::Healthy) => Health::Healthy,
        Some(GpuState::Unhealthy) => Health::Unhealthy,
        Some(GpuState::Unknown) | None => Health::Unknown,
    }
}

fn allocatable(node: &Node, key: &str) -> Option<String> {
    node.status.as_ref()?.allocatable.as_ref()?.get(key).map(|q| q.0.clone())
}

/// What a pod holds: milli-CPU, MiB, GPUs (requests, else limits, summed over containers).
pub fn pod_requests(pod: &Pod) -> (u64, u64, u32) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0, 0) };
    let mut out = (0u64, 0u64, 0u32);
    for c in &spec.containers {
        let Some(r) = c.resources.as_ref() else { continue };
        let get = |k: &str| {
            r.requests.as_ref().and_then(|m| m.get(k)).or_else(|| r.limits.as_ref().and_then(|m| m.get(k)))
        };
        out.0 += get("cpu").and_then(|q| quantity::milli(&q.0).ok()).unwrap_or(0);
        out.1 += get("memory").and_then(|q| quantity::mib(&q.0).ok()).unwrap_or(0);
        out.2 += get(GPU_RESOURCE).and_then(|q| quantity::milli(&q.0).ok()).map_or(0, |m| (m / 1000) as u32);
    }
    out
}

/// Whether a pod still holds its node's resources.
pub fn holds_resources(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    phase != "Succeeded" && phase != "Failed"
}

pub fn pool_kind(k: haiyun_api::PoolKind) -> PoolKind {
    match k {
        haiyun_api::PoolKind::Hpc => PoolKind::Hpc,
        haiyun_api::PoolKind::Ai => PoolKind::Ai,
        haiyun_api::PoolKind::General => PoolKind::General,
        haiyun_api::PoolKind::Edge => PoolKind::Edge,
    }
}

/// The core's classification for an API one.
pub fn classification(c: haiyun_api::Classification) -> Classification {
    match c {
        haiyun_api::Classification::Public => Classification::Public,
        haiyun_api::Classification::Internal => Classification::Internal,
        haiyun_api::Classification::Sensitive => Classification::Sensitive,
        haiyun_api::Classification::Core => Classification::Core,
    }
}

/// What this operator's own placements hold on each node, and which pods they cover.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// Node name → (GPU indices held, tasks).
    pub nodes: HashMap<String, (u32, u32)>,
    /// Pods the placements cover, by `namespace/name`, with the run they belong to (`None`: a plain pod).
    pub pods: HashMap<String, Option<String>>,
}

impl Claims {
    /// Records a task of ours on `node` holding `gpus`.
    pub fn hold(&mut self, node: &str, gpus: &[u32], pod: String, run: Option<String>) {
        let e = self.nodes.entry(node.to_string()).or_default();
        e.0 |= super::gpu_mask(gpus);
        e.1 += 1;
        self.pods.insert(pod, run);
    }

    /// Whether a placement of ours covers this pod (same name, and same run for a job's pods).
    fn covers(&self, pod: &Pod) -> bool {
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        match self.pods.get(&key) {
            Some(None) => true,
            Some(Some(run)) => pod.labels().get(RUN_LABEL) == Some(run),
            None => false,
        }
    }
}

/// What pods no placement of ours covers hold on a node.
#[derive(Debug, Clone, Copy, Default)]
struct Foreign {
    cpu: u64,
    mem: u64,
    tasks: u32,
    /// GPUs held at unknown indices.
    gpus: u32,
    /// GPUs held at known indices (pods Haiyun bound once).
    mask: u32,
}

/// Builds the federation: each Node joins the first pool (by name) whose selector its labels match. Pods no
/// placement of ours covers (other schedulers' pods, and ours that are terminating or left over) take their
/// requests off their node, and the GPUs they hold are never placed on. Cordoned or NotReady nodes stay in (so
/// the jobs running there keep their place) but take nothing new.
/// GPUs follow their node agent's report: unhealthy ones are never placed on, and a GPU the agent does not know, or
/// any GPU of a node whose agent is stale, is unknown. Nodes without an agent take their GPUs as healthy.
pub fn federation(
    pools: &[&ComputePool],
    nodes: &[&Node],
    pods: &[&Pod],
    claims: &Claims,
    fleet: &FleetView,
    slurm: &SlurmViews,
    simulated: bool,
) -> Federation {
    let mut f = Federation::default();
    let mut selectors: Vec<(u32, &BTreeMap<String, String>)> = Vec::new();
    let mut slurm_pools: Vec<(u32, String)> = Vec::new();
    let mut sorted: Vec<&&ComputePool> = pools.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for p in sorted {
        let name = p.name_any();
        let pool = Pool {
            name: name.clone(),
            kind: pool_kind(p.spec.kind),
            site: p.spec.site.clone(),
            clearance: classification(p.spec.clearance),
        };
        if p.spec.backend.slurm.is_some() {
            // A pool that does not answer stays, with its last known nodes taking nothing new, so the jobs running
            // there keep their place.
            match slurm.get(&name).map(|v| &v.available) {
                Some(Ok(())) => {}
                Some(Err(why)) => {
                    f.unavailable.insert(name.clone(), format!("its Slurm cluster does not answer: {why}"));
                }
                None => {
                    f.unavailable.insert(name.clone(), "its Slurm cluster has not been reached yet".into());
                }
            }
            if let Some(limit) = slurm.get(&name).and_then(|v| v.time_limit_min) {
                f.time_limits.insert(f.cluster.pools.len() as u32, limit);
            }
            slurm_pools.push((f.cluster.pools.len() as u32, name.clone()));
            f.slurm.insert(f.cluster.pools.len() as u32);
            f.cluster.pools.push(pool);
            f.pool_names.push(name);
            continue;
        }
        let Some(k8s) = p.spec.backend.kubernetes.as_ref() else {
            if simulated {
                let id = f.cluster.pools.len() as u32;
                f.cluster.pools.push(pool);
                f.pool_names.push(name);
                super::simulated::add_nodes(&mut f, id, p, claims, fleet);
            } else {
                f.unavailable.insert(
                    name,
                    "simulated pools are served only by `haiyun demo`; use backend.kubernetes or backend.slurm"
                        .into(),
                );
            }
            continue;
        };
        let id = f.cluster.pools.len() as u32;
        f.cluster.pools.push(pool);
        f.pool_names.push(name);
        selectors.push((id, &k8s.node_selector));
    }
    let mut foreign: HashMap<&str, Foreign> = HashMap::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
        if !holds_resources(pod) || claims.covers(pod) {
            continue;
        }
        let (c, m, g) = pod_requests(pod);
        let e = foreign.entry(node).or_default();
        e.cpu += c;
        e.mem += m;
        e.tasks += 1;
        let known = super::pod::gpus_of(pod);
        if known.is_empty() {
            e.gpus += g;
        } else {
            e.mask |= super::gpu_mask(&known);
        }
    }
    let mut domains: HashMap<String, u32> = HashMap::new();
    let mut racks: HashMap<String, u32> = HashMap::new();
    let mut sorted_nodes: Vec<&&Node> = nodes.iter().collect();
    sorted_nodes.sort_by_key(|n| n.name_any());
    for node in sorted_nodes {
        let labels = node.labels();
        let Some((pool, _)) =
            selectors.iter().find(|(_, sel)| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        else {
            continue;
        };
        let name = node.name_any();
        let open = usable(node);
        let (ours_mask, ours_tasks) = claims.nodes.get(&name).copied().unwrap_or_default();
        if !open && ours_tasks == 0 {
            continue;
        }
        let used = foreign.get(name.as_str()).copied().unwrap_or_default();
        let cpu = allocatable(node, "cpu").and_then(|q| quantity::milli(&q).ok()).unwrap_or(0);
        let mem = allocatable(node, "memory").and_then(|q| quantity::mib(&q).ok()).unwrap_or(0);
        let max_pods = allocatable(node, "pods").and_then(|q| q.parse::<u32>().ok()).unwrap_or(110);
        let count = allocatable(node, GPU_RESOURCE).and_then(|q| q.parse::<u32>().ok()).unwrap_or(0);
        let count = count.min(haiyun_scheduler::model::MAX_GPUS_PER_NODE as u32);
        let model_name = labels.get(GPU_MODEL_LABEL).or_else(|| labels.get(GFD_PRODUCT_LABEL));
        let model = match model_name {
            Some(m) if count > 0 => f.cluster.models.intern(&m.to_lowercase()),
            _ => None,
        };
        let memory_mib =
            labels.get(GFD_MEMORY_LABEL).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_GPU_MEMORY_MIB);
        let next = domains.len() as u32;
        let domain = *domains
            .entry(labels.get(NVLINK_LABEL).cloned().unwrap_or_else(|| format!("node:{name}")))
            .or_insert(next);
        let next = racks.len() as u32;
        let rack = *racks
            .entry(labels.get(RACK_LABEL).cloned().unwrap_or_else(|| format!("node:{name}")))
            .or_insert(next);
        let taken = taken(count, ours_mask, used.mask, used.gpus);
        let agent = fleet.get(&name);
        let gpus = match model {
            Some(model) => (0..count)
                .map(|j| {
                    let health =
                        if open && taken & (1 << j) == 0 { reported(agent, j) } else { Health::Unknown };
                    Gpu { model, memory_mib, nvlink_domain: domain, health }
                })
                .collect(),
            None => Vec::new(),
        };
        let max_tasks = if open { max_pods.saturating_sub(used.tasks) } else { ours_tasks };
        f.node_ids.insert(name.clone(), f.cluster.nodes.len() as u32);
        f.cluster.nodes.push(CoreNode {
            name,
            pool: *pool,
            rack,
            cpu_milli: cpu.saturating_sub(used.cpu),
            memory_mib: mem.saturating_sub(used.mem),
            gpus,
            max_tasks,
        });
    }
    for (id, name) in slurm_pools {
        if let Some(view) = slurm.get(&name) {
            super::slurm::add_nodes(&mut f, id, &name, view, claims, view.available.is_ok());
        }
    }
    f
}

/// Interns a GPU model name as nodes label it (lower-case).
pub fn model_id(models: &mut GpuModels, name: &str) -> Option<u8> {
    models.intern(&name.to_lowercase())
}
