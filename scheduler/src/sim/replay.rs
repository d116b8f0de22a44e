//! One run of the FGD placement protocol: pods arrive in a fixed order, never depart, and fail when no node fits.

use crate::model::{Cluster, Gang};
use crate::placer::{NodesToScore, Outcome, Placer, PlacerConfig};
use crate::plugin::score::{FragModel, node_fragmentation};
use crate::plugin::{Policy, TypicalPods};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::trace::{Sequence, TracePod};

/// Why a replay could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The sequence names a pod row the pod list does not have.
    #[error(
        "failed to replay seed {seed}: arrival {arrival} names pod row {row}, but the pod list has {pods} rows"
    )]
    UnknownRow {
        /// The seed.
        seed: u64,
        /// Position in the arrival sequence.
        arrival: usize,
        /// The row named.
        row: u32,
        /// Rows available.
        pods: usize,
    },
    /// The snapshot refused a change (a broken invariant).
    #[error("failed to replay: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// What one replay recorded after every arrival.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplayRun {
    /// GPU milli arrived so far (failed pods included), after each arrival.
    pub arrived: Vec<u64>,
    /// GPU milli allocated, after each arrival.
    pub used: Vec<u64>,
    /// Fragmentation ratio in percent (100 · Σ F_n / free GPU milli), after each arrival.
    pub frag_pct: Vec<f64>,
    /// Pods that found no node.
    pub failed: usize,
}

/// Replays `seq` over `cluster` with `policy`, measuring fragmentation against `typical` (FGD's definition).
pub fn replay_fgd(
    cluster: &Cluster,
    pods: &[TracePod],
    seq: &Sequence,
    policy: Policy,
    typical: &TypicalPods,
) -> Result<ReplayRun, ReplayError> {
    let mut snap = Snapshot::new(cluster.clone())?;
    snap.set_ranks(seq.node_rank.clone())?;
    let mut placer = Placer::new(policy, PlacerConfig { nodes_to_score: NodesToScore::All });
    let frag_of = |snap: &Snapshot, id: u32| {
        snap.view(id).map_or(0.0, |v| {
            node_fragmentation(typical, v.cpu_free as i64, 0, v.free, v.node, FragModel::FGD)
        })
    };
    let mut frag: Vec<f64> = (0..snap.len() as u32).map(|id| frag_of(&snap, id)).collect();
    let mut frag_sum: f64 = frag.iter().sum();
    let capacity = cluster.gpu_count() as u64 * 1000;
    let mut run = ReplayRun::default();
    let (mut arrived, mut used) = (0u64, 0u64);
    for (arrival, row) in seq.pod_rows.iter().enumerate() {
        let pod = pods.get(*row as usize).ok_or(ReplayError::UnknownRow {
            seed: seq.seed,
            arrival,
            row: *row,
            pods: pods.len(),
        })?;
        let gang = Gang::single(pod.spec);
        arrived += gang.gpu_total_milli();
        match placer.place(&mut snap, &gang)? {
            Outcome::Placed(p) => {
                used += gang.gpu_total_milli();
                for t in &p.tasks {
                    let i = t.node as usize;
                    let f = frag_of(&snap, t.node);
                    frag_sum += f - frag[i];
                    frag[i] = f;
                }
            }
            Outcome::Rejected(_) => run.failed += 1,
        }
        let free = capacity - used;
        run.arrived.push(arrived);
        run.used.push(used);
        run.frag_pct.push(if free == 0 { 0.0 } else { 100.0 * frag_sum / free as f64 });
    }
    Ok(run)
}
