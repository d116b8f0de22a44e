//! Simulated pools in the core's federation: the nodes their spec describes, named `<pool>-<NN>`, four to a rack,
//! each GPU as its node agent reports it. Only a process that serves them (`haiyun demo`) turns them on.

use haiyun_api::pool::SimulatedNodes;
use haiyun_api::{ComputePool, quantity};
use haiyun_scheduler::model::{Gpu, Node as CoreNode, PoolId};
use kube::ResourceExt;

use crate::backend::Inputs;
use crate::index::cluster::{Federation, reported};

/// Nodes of one simulated rack.
const NODES_PER_RACK: usize = 4;

/// Every node of a simulated pool: its name and its group, in order.
pub fn nodes(pool: &ComputePool) -> Vec<(String, &SimulatedNodes)> {
    let name = pool.name_any();
    let groups = pool.spec.backend.simulated.iter().flat_map(|s| &s.nodes);
    groups
        .flat_map(|g| std::iter::repeat_n(g, g.count as usize))
        .enumerate()
        .map(|(i, g)| (format!("{name}-{:02}", i + 1), g))
        .collect()
}

/// GPU memory of a model, MiB (what its common cards carry).
pub fn gpu_memory_mib(model: &str) -> u32 {
    match model {
        "t4" | "v100m16" => 16_384,
        "a10" | "l4" => 24_576,
        "v100" | "v100m32" => 32_768,
        "l40s" | "a40" => 49_152,
        _ => 81_920,
    }
}

/// Adds the nodes of simulated pools. A GPU is placeable when its agent reports it healthy (or the node has no
/// agent); our own placements hold the GPUs they name.
pub fn contribute(pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, f: &mut Federation) {
    contribute_linked(pools, inputs, &std::collections::BTreeSet::new(), f);
}

/// Adds the nodes of simulated pools; those of pools in `cut` keep what runs on them but take nothing new.
pub fn contribute_linked(
    pools: &[(PoolId, &ComputePool)],
    inputs: &Inputs<'_>,
    cut: &std::collections::BTreeSet<String>,
    f: &mut Federation,
) {
    for (id, p) in pools {
        add_nodes(f, *id, p, inputs, !cut.contains(&p.name_any()));
    }
}

fn add_nodes(f: &mut Federation, pool: PoolId, spec: &ComputePool, inputs: &Inputs<'_>, open: bool) {
    for (i, (name, g)) in nodes(spec).into_iter().enumerate() {
        let model_name = g.gpu_model.to_lowercase();
        let count = g.gpus.min(haiyun_scheduler::model::MAX_GPUS_PER_NODE as u32);
        let model = (count > 0).then(|| f.cluster.models.intern(&model_name)).flatten();
        let rack = f.cluster.nodes.len() as u32 - (i % NODES_PER_RACK) as u32;
        let node_id = f.cluster.nodes.len() as u32;
        let agent = inputs.fleet.get(&name);
        let gpus = match model {
            Some(model) => (0..count)
                .map(|j| Gpu {
                    model,
                    memory_mib: gpu_memory_mib(&model_name),
                    nvlink_domain: node_id,
                    health: if open { reported(agent, j) } else { haiyun_scheduler::model::Health::Unknown },
                })
                .collect(),
            None => Vec::new(),
        };
        let (_, ours_tasks) = inputs.claims.nodes.get(&name).copied().unwrap_or_default();
        let cpu = quantity::milli(&g.cpu).unwrap_or(0);
        f.add_node(CoreNode {
            name,
            pool,
            rack,
            cpu_milli: cpu,
            memory_mib: quantity::mib(&g.memory).unwrap_or(0),
            gpus,
            max_tasks: if open { (cpu / 1000).max(u64::from(ours_tasks)).max(1) as u32 } else { ours_tasks },
        });
    }
}
