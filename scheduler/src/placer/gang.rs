//! Gang placement: every task or none, inside one node, NVLink domain, rack or pool when asked.

use super::{Outcome, Placement, Placer, Rejection, Scope, explain};
use crate::model::{Gang, NodeId, PoolId, TaskSpec, Topology};
use crate::plugin::fitting_gpus;
use crate::snapshot::{Snapshot, SnapshotError, TaskPlacement};

/// A topology group: its nodes, and the NVLink domain when the group is one.
type Group = (Vec<NodeId>, Option<u32>);

/// The most topology groups tried in full for one gang; groups are pre-screened by free capacity.
const MAX_GROUPS_TRIED: usize = 8;

impl Placer {
    /// Places every task of `gang` or none. On `Placed`, the snapshot and the policy hold the tasks.
    pub fn place(&mut self, snap: &mut Snapshot, gang: &Gang) -> Result<Outcome, SnapshotError> {
        self.place_in(snap, gang, None)
    }

    /// Like [`Placer::place_in`], without explaining a failure (for tentative attempts).
    pub fn try_place_in(
        &mut self,
        snap: &mut Snapshot,
        gang: &Gang,
        pool: Option<PoolId>,
    ) -> Result<Option<Placement>, SnapshotError> {
        self.place_with(snap, gang, pool, false).map(|o| match o {
            Outcome::Placed(p) => Some(p),
            Outcome::Rejected(_) => None,
        })
    }

    /// Like [`Placer::place`], inside one pool when `pool` is given.
    pub fn place_in(
        &mut self,
        snap: &mut Snapshot,
        gang: &Gang,
        pool: Option<PoolId>,
    ) -> Result<Outcome, SnapshotError> {
        self.place_with(snap, gang, pool, true)
    }

    fn place_with(
        &mut self,
        snap: &mut Snapshot,
        gang: &Gang,
        pool: Option<PoolId>,
        explained: bool,
    ) -> Result<Outcome, SnapshotError> {
        let why = |snap: &Snapshot, i: usize, within: Topology, gpus: u32| {
            if explained {
                explain(snap, &gang.tasks[i], i, within, gpus, pool)
            } else {
                Rejection::unexplained(i)
            }
        };
        if gang.topology == Topology::Any {
            let scope = pool.map_or(Scope::All, Scope::Pool);
            return match self.try_in(snap, &gang.tasks, scope)? {
                Ok((p, _)) => Ok(Outcome::Placed(p)),
                Err(i) => Ok(Outcome::Rejected(why(snap, i, Topology::Any, 0))),
            };
        }
        let in_pool = |nodes: &Vec<NodeId>| {
            pool.is_none_or(|p| {
                nodes.iter().all(|n| snap.cluster().nodes.get(*n as usize).is_some_and(|x| x.pool == p))
            })
        };
        let groups: Vec<Group> =
            self.groups(snap, gang).into_iter().filter(|(nodes, _)| in_pool(nodes)).collect();
        let mut best: Option<(i64, usize)> = None;
        for (gi, (nodes, domain)) in groups.iter().enumerate().take(MAX_GROUPS_TRIED) {
            let scope = scope_of(nodes, *domain);
            if let Ok((p, score)) = self.try_in(snap, &gang.tasks, scope)? {
                self.forget(snap, &p)?;
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, gi));
                }
            }
        }
        if let Some((_, gi)) = best {
            let (nodes, domain) = &groups[gi];
            if let Ok((p, _)) = self.try_in(snap, &gang.tasks, scope_of(nodes, *domain))? {
                return Ok(Outcome::Placed(p));
            }
        }
        let largest = largest_task(gang);
        let gpus: u32 = gang.tasks.iter().map(|t| t.gpus).sum();
        Ok(Outcome::Rejected(why(snap, largest, gang.topology, gpus)))
    }

    /// Places the tasks one by one within `scope`, returning the placement and the sum of its scores; on the
    /// first failure undoes the rest and returns the failed task's index.
    fn try_in(
        &mut self,
        snap: &mut Snapshot,
        tasks: &[TaskSpec],
        scope: Scope<'_>,
    ) -> Result<Result<(Placement, i64), usize>, SnapshotError> {
        let mut placed: Vec<TaskPlacement> = Vec::with_capacity(tasks.len());
        let mut total = 0i64;
        for (i, task) in tasks.iter().enumerate() {
            match self.pick_scored(snap, task, scope) {
                Some((p, score)) => {
                    self.assume_task(snap, &p)?;
                    placed.push(p);
                    total = total.saturating_add(score);
                }
                None => {
                    for p in placed.iter().rev() {
                        self.forget_task(snap, p)?;
                    }
                    return Ok(Err(i));
                }
            }
        }
        Ok(Ok((Placement { tasks: placed }, total)))
    }

    /// Candidate groups for a gang's topology, tightest sufficient free capacity first.
    fn groups(&self, snap: &Snapshot, gang: &Gang) -> Vec<Group> {
        let needed: u32 = gang.tasks.iter().map(|t| t.gpus).sum();
        let probe = gang.tasks[largest_task(gang)];
        let g = snap.groups();
        let raw: Vec<Group> = match gang.topology {
            Topology::Any => vec![((0..snap.len() as u32).collect(), None)],
            Topology::SameNode => (0..snap.len() as u32).map(|id| (vec![id], None)).collect(),
            Topology::Rack => g.racks.values().map(|n| (n.clone(), None)).collect(),
            Topology::Pool => g.pools.values().map(|n| (n.clone(), None)).collect(),
            Topology::NvlinkDomain => g.nvlink.iter().map(|(d, n)| (n.clone(), Some(*d))).collect(),
        };
        let mut sized: Vec<(u32, u32, Group)> = raw
            .into_iter()
            .map(|grp| (free_in(snap, &probe, &grp.0, grp.1), min_rank(snap, &grp.0), grp))
            .filter(|(free, _, _)| *free >= needed)
            .collect();
        sized.sort_by_key(|(free, rank, _)| (*free, *rank));
        sized.into_iter().map(|(_, _, grp)| grp).collect()
    }
}

fn scope_of(nodes: &[NodeId], domain: Option<u32>) -> Scope<'_> {
    match domain {
        Some(d) => Scope::Nvlink(nodes, d),
        None => Scope::Nodes(nodes),
    }
}

/// Index of the task asking for the most GPU milli (the hardest to fit).
fn largest_task(gang: &Gang) -> usize {
    gang.tasks
        .iter()
        .enumerate()
        .max_by_key(|(i, t)| (t.gpu_total_milli(), t.cpu_milli, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

/// GPUs in a group with the probe task's share free (of its models, in the domain if given).
fn free_in(snap: &Snapshot, probe: &TaskSpec, nodes: &[NodeId], domain: Option<u32>) -> u32 {
    nodes
        .iter()
        .filter_map(|id| snap.view(*id))
        .filter(|v| v.sets.allows(probe.nodes, v.id))
        .map(|v| {
            let usable = v.gpus_of(probe.models) & domain.map_or(u32::MAX, |d| v.gpus_in_domain(d));
            fitting_gpus(v.free, usable, probe.gpu_milli.max(1)).count_ones()
        })
        .sum()
}

fn min_rank(snap: &Snapshot, nodes: &[NodeId]) -> u32 {
    nodes.iter().filter_map(|id| snap.view(*id)).map(|v| v.rank).min().unwrap_or(u32::MAX)
}
