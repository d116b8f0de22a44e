//! An arrival sequence of the FGD experiments: which pod rows arrive in which order, and node tie-break ranks.

use serde::{Deserialize, Serialize};

/// One seed's arrival order and node ranks (`fgd-sequences/<workload>/seed-S.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    /// Workload name (pod CSV stem).
    pub workload: String,
    /// The seed that produced it.
    pub seed: u64,
    /// Arrival order as 0-based data-row indices of the pod CSV; clones repeat rows.
    pub pod_rows: Vec<u32>,
    /// One tie-break rank per node, in node-CSV order; lower wins ties.
    pub node_rank: Vec<u32>,
}
