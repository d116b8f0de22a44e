//! Explanations for people: each pending reason and hint as one line with the phase, shortfall and remedy.

use super::{Hint, PendingReason, Scheduler};
use crate::model::{JobId, ModelId, PoolId};

fn duration(s: f64) -> String {
    if s >= 5400.0 { format!("{:.1} h", s / 3600.0) } else { format!("{:.0} min", (s / 60.0).max(1.0)) }
}

impl Scheduler {
    fn model_name(&self, m: Option<ModelId>) -> String {
        m.map_or("CPU".into(), |m| self.snap.cluster().models.name(m).to_string())
    }

    fn pool_name(&self, p: PoolId) -> String {
        self.snap.cluster().pools.get(p as usize).map_or("?".into(), |x| x.name.clone())
    }

    /// One line for a reason.
    pub fn reason_line(&self, r: &PendingReason) -> String {
        let models = &self.snap.cluster().models;
        match r {
            PendingReason::Quota { shortfall: s, .. } if s.user.is_some() => format!(
                "quota: user {} needs {} {} in queue {}, {} left of the queue's per-user limit",
                self.quotas.user_name(s.user.unwrap_or_default()),
                s.flavor.amount(s.needed),
                s.flavor.describe(models),
                self.quotas.spec(s.queue).map_or("?", |q| q.name.as_str()),
                s.flavor.amount(s.left),
            ),
            PendingReason::Quota { shortfall: s, .. } => format!(
                "quota: queue {} needs {} {}, {} left, cohort can lend {}",
                self.quotas.spec(s.queue).map_or("?", |q| q.name.as_str()),
                s.flavor.amount(s.needed),
                s.flavor.describe(models),
                s.flavor.amount(s.left),
                s.flavor.amount(s.cohort_can_lend),
            ),
            PendingReason::Reservation { pool, flavor, needed, free_now, wait_s, .. } => format!(
                "reservation: needs {} {} in pool {}, {} free now{}; it may start in ~{}",
                flavor.amount(*needed),
                flavor.describe(models),
                self.pool_name(*pool),
                flavor.amount(*free_now),
                if free_now >= needed { " but held for jobs ahead of it" } else { "" },
                duration(*wait_s)
            ),
            PendingReason::Placement { pool, rejection, .. } => {
                format!("placement: in pool {}: {}", self.pool_name(*pool), rejection.message(models))
            }
            PendingReason::FasterLater { model, saves_s } => format!(
                "waiting for {}: it finishes {} sooner than starting now on a slower option",
                self.model_name(*model),
                duration(*saves_s)
            ),
            PendingReason::DataClearance { needs } => {
                format!(
                    "data clearance: no pool is cleared for {} data; register a replica in a cleared pool",
                    needs.as_str()
                )
            }
            PendingReason::NoAllowedPool { needs } => format!(
                "pools: none of the pools it allows (by kind or site) has nodes and is cleared for {} data; \
                 allow more pool kinds or sites",
                needs.as_str()
            ),
            PendingReason::NoUsableModel => {
                "no usable GPU model: none it allows can run it in a cleared pool; allow another model".into()
            }
            PendingReason::BeyondBackfillDepth => {
                "beyond the backfill depth: its start estimate is rough".into()
            }
        }
    }

    /// One line for a hint.
    pub fn hint_line(&self, h: &Hint) -> String {
        match h {
            Hint::AcceptModel { model, earlier_by_s } => format!(
                "accepting {} would start it ~{} earlier",
                self.model_name(Some(*model)),
                duration(*earlier_by_s)
            ),
        }
    }

    /// Every reason and hint of a job, one line each (empty for unknown or running jobs).
    pub fn explain(&self, id: JobId) -> Vec<String> {
        let Some(st) = self.status(id) else { return Vec::new() };
        st.reasons
            .iter()
            .map(|r| self.reason_line(r))
            .chain(st.hints.iter().map(|h| self.hint_line(h)))
            .collect()
    }
}
