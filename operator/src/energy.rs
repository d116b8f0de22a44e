//! Energy per job: the agents' GPU energy counters, added up per running job in its status. Each account keeps the
//! counter of each of the job's GPUs and adds what they used since the last one; a GPU whose agent reports no counter
//! but its power adds power × the time since the last account. Accounts come once a minute and whenever the job's
//! status is written anyway (so the last one lands as the job ends).

use haiyun_api::job::{ComputeJobStatus, JobEnergy, JobPhase};

use crate::fleet::FleetView;
use haiyun_scheduler::model::Time;

use crate::time::rfc3339;

/// Seconds between accounts of a running job whose status does not change otherwise.
pub const ACCOUNT_EVERY_S: f64 = 60.0;

/// Whether a running job's energy is due an account at `now`.
pub fn due(status: &ComputeJobStatus, now: Time) -> bool {
    if status.phase != JobPhase::Running {
        return false;
    }
    let last = status.energy.as_ref().and_then(|e| e.accounted.as_deref()).and_then(crate::time::parse);
    last.is_none_or(|t| now - t >= ACCOUNT_EVERY_S)
}

/// Adds to `status` what its placement's GPUs used since its last account, from the counters the agents reported.
/// A GPU seen for the first time starts its count (nothing is added for it); a counter that went back (the driver
/// reloaded) starts again from there; a GPU whose agent gives no counter adds its power × the time since the last
/// account (none on the first); a GPU with neither adds nothing.
pub fn account(status: &mut ComputeJobStatus, fleet: &FleetView, now: Time) {
    let Some(placement) = status.placement.as_ref() else { return };
    let mut counters = std::collections::BTreeMap::new();
    let mut power_mw = 0u64;
    for t in &placement.tasks {
        let Some(agent) = fleet.get(&t.node) else { continue };
        for g in &t.gpus {
            let gpu = agent.gpus.get(g);
            match (gpu.and_then(|v| v.energy_mj), gpu.and_then(|v| v.power_mw)) {
                (Some(mj), _) => {
                    counters.insert(format!("{}/{g}", t.node), mj);
                }
                (None, Some(mw)) => power_mw += u64::from(mw),
                (None, None) => {}
            }
        }
    }
    if counters.is_empty() && power_mw == 0 && status.energy.is_none() {
        return;
    }
    let last = status.energy.as_ref().and_then(|e| e.accounted.as_deref()).and_then(crate::time::parse);
    let e = status.energy.get_or_insert_with(JobEnergy::default);
    // Power × time: milliwatts × seconds are millijoules.
    let mut added_mj = last.map_or(0, |t| (power_mw as f64 * (now - t).max(0.0)).round() as u64);
    for (key, now_mj) in &counters {
        if let Some(before) = e.counters.get(key) {
            added_mj += now_mj.saturating_sub(*before);
        }
    }
    e.joules = ((e.joules * 1000.0 + added_mj as f64).round()) / 1000.0;
    e.counters = counters;
    e.accounted = Some(rfc3339(now));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{GpuState, GpuView, NodeView};
    use haiyun_api::job::{Placement, TaskPlacement};

    fn fleet(counters: &[(u32, u64)]) -> FleetView {
        let gpus = counters
            .iter()
            .map(|(i, mj)| {
                let v = GpuView {
                    state: GpuState::Healthy,
                    reason: String::new(),
                    uuid: String::new(),
                    utilization: None,
                    nvlink_peers: Vec::new(),
                    energy_mj: Some(*mj),
                    power_mw: None,
                };
                (*i, v)
            })
            .collect();
        let node =
            NodeView { stale: false, silent_seconds: 0.0, gpus, last_gap_seconds: 0.0, lost: 0, replayed: 0 };
        [("n1".to_string(), node)].into_iter().collect()
    }

    fn running(gpus: Vec<u32>) -> ComputeJobStatus {
        let task = TaskPlacement { node: "n1".into(), gpus, ..Default::default() };
        ComputeJobStatus {
            phase: JobPhase::Running,
            placement: Some(Placement { pool: "p".into(), tasks: vec![task], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn adds_what_its_gpus_used_between_accounts_and_only_theirs() {
        let mut st = running(vec![0, 1]);
        assert!(due(&st, 0.0));
        account(&mut st, &fleet(&[(0, 1_000_000), (1, 2_000_000), (2, 0)]), 0.0);
        assert_eq!(st.energy.as_ref().unwrap().joules, 0.0, "the first account starts the count");
        assert!(!due(&st, 30.0));
        assert!(due(&st, 60.0));
        // GPU 0 used 700 J, GPU 1 350 J; GPU 2 (another job's) 5 kJ.
        account(&mut st, &fleet(&[(0, 1_700_000), (1, 2_350_000), (2, 5_000_000)]), 60.0);
        assert_eq!(st.energy.as_ref().unwrap().joules, 1050.0);
        // The driver of GPU 1 reloaded: its counter starts again, nothing negative is added.
        account(&mut st, &fleet(&[(0, 1_800_000), (1, 10_000)]), 120.0);
        let e = st.energy.unwrap();
        assert_eq!(e.joules, 1150.0);
        assert_eq!(e.counters["n1/1"], 10_000);
    }

    #[test]
    fn a_gpu_without_a_counter_adds_its_power_times_the_time_since_the_last_account() {
        let mut st = running(vec![0, 1]);
        let mut f = fleet(&[(0, 1_000_000)]);
        let node = f.get_mut("n1").unwrap();
        let mut gpu1 = node.gpus[&0].clone();
        (gpu1.energy_mj, gpu1.power_mw) = (None, Some(300_000));
        node.gpus.insert(1, gpu1);
        account(&mut st, &f, 0.0);
        assert_eq!(st.energy.as_ref().unwrap().joules, 0.0, "nothing before the first account");
        // 60 s later: GPU 0's counter says 500 J; GPU 1 drew 300 W for 60 s, 18 kJ.
        f.get_mut("n1").unwrap().gpus.get_mut(&0).unwrap().energy_mj = Some(1_500_000);
        account(&mut st, &f, 60.0);
        assert_eq!(st.energy.unwrap().joules, 18_500.0);
    }

    #[test]
    fn a_job_without_agents_or_not_running_has_no_account() {
        let mut st = running(vec![0]);
        account(&mut st, &FleetView::default(), 0.0);
        assert_eq!(st.energy, None);
        st.phase = JobPhase::Queued;
        assert!(!due(&st, 0.0));
    }
}
