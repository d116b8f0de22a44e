//! Queues in cohorts: nominal quota per flavor, borrowing and lending limits, per-user limits and grants.

mod grant;
mod resources;
mod share;
mod sums;

use serde::{Deserialize, Serialize};

pub use grant::Grant;
pub use resources::{Flavor, Resources};
pub use share::{Decayed, align, decayed_seconds};

use crate::model::{QueueId, Time, UserId};

/// How a queue orders its own pending jobs of equal priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Oldest first.
    #[default]
    Fifo,
    /// Smallest GPU-area (GPUs × best-case run time) first, aged by waiting: each second waited takes 0.15
    /// GPU-seconds off, so a job of area A outranks every newcomer after waiting at most A / 0.15 seconds — no
    /// job starves. Minimises average completion time far better than FIFO.
    ShortestFirst,
}

/// Which jobs of its own queue a pending job may evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithinQueue {
    /// None.
    Never,
    /// Jobs of strictly lower priority.
    #[default]
    LowerPriority,
    /// Lower priority, or equal priority that the queue's ordering puts behind it by a clear margin (the
    /// victim's remaining run time is at least twice the newcomer's) and that lose at most a few minutes of
    /// work since their last checkpoint. Two jobs can never evict each other in turn: each would need the
    /// other's remaining time to be at least twice its own.
    LowerOrLaterInOrder,
}

/// A queue's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// Unique name.
    pub name: String,
    /// Cohort it shares unused quota with (`None`: it borrows and lends nothing): a path, `research/vision` being the
    /// cohort `vision` inside the cohort `research`. Quota is lent across the whole tree (every queue whose path
    /// starts with `research`); the tree shapes fair share and which borrower gives back first.
    pub cohort: Option<String>,
    /// Nominal quota per flavor.
    pub nominal: Resources,
    /// Most it may borrow above nominal, per flavor (`None`: no limit).
    pub borrowing_limit: Option<Resources>,
    /// Most of its nominal quota others may borrow, per flavor (`None`: all of it).
    pub lending_limit: Option<Resources>,
    /// Fair-share weight (> 0).
    pub weight: f64,
    /// Order of its own jobs.
    pub ordering: Ordering,
    /// Which of its own jobs a pending job may evict.
    #[serde(default)]
    pub within_queue: WithinQueue,
    /// Most one user may hold in the queue at once, per flavor (`None`: no limit; a flavor at 0 is not limited).
    #[serde(default)]
    pub user_limit: Option<Resources>,
}

impl QueueSpec {
    /// A queue with `nominal` quota, no cohort, weight 1.
    pub fn new(name: &str, nominal: Resources) -> Self {
        QueueSpec {
            name: name.into(),
            cohort: None,
            nominal,
            borrowing_limit: None,
            lending_limit: None,
            weight: 1.0,
            ordering: Ordering::default(),
            within_queue: WithinQueue::default(),
            user_limit: None,
        }
    }
}

/// Why a job does not fit its queue's quota: the first flavor that is short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaShortfall {
    /// The queue.
    pub queue: QueueId,
    /// The flavor that is short.
    pub flavor: Flavor,
    /// What the job needs of it.
    pub needed: u64,
    /// What is left of the queue's own nominal quota (grants included).
    pub left: u64,
    /// What the cohort could lend it now.
    pub cohort_can_lend: u64,
    /// Whether the request is within the queue's nominal quota, so reclaiming lent quota would let it in.
    pub within_nominal: bool,
    /// The user whose per-user limit is short (then `left` is what is left of that limit), if that is the cause.
    #[serde(default)]
    pub user: Option<UserId>,
}

/// Why the quota book refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// A queue id past the end.
    #[error("failed to find queue #{0}")]
    UnknownQueue(QueueId),
    /// A non-positive weight.
    #[error("failed to add queue {0:?}: its weight must be greater than 0")]
    BadWeight(String),
    /// Two queues with one name.
    #[error("failed to add queue {0:?}: a queue with that name exists")]
    Duplicate(String),
}

/// Quota accounting for every queue.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    specs: Vec<QueueSpec>,
    usage: Vec<Resources>,
    grants: Vec<Grant>,
    /// The queues of each cohort tree (by its root), and each queue's tree.
    trees: Vec<Vec<QueueId>>,
    tree_of: Vec<Option<usize>>,
    /// What each user holds in each queue.
    users: std::collections::HashMap<(QueueId, UserId), Resources>,
    /// Users' names by id, and ids by name.
    user_names: Vec<String>,
    user_ids: std::collections::HashMap<String, UserId>,
    /// Past usage per queue, decayed (resource-seconds per flavor), and its half-life (`None`: fair share counts
    /// only what runs now).
    history: Vec<Decayed>,
    half_life: Option<f64>,
    /// Per cohort tree (as `trees`), the sums a borrowing check needs.
    sums: Vec<sums::TreeSums>,
}

impl Quotas {
    /// Adds a queue and returns its id.
    pub fn add(&mut self, spec: QueueSpec) -> Result<QueueId, QuotaError> {
        if spec.weight <= 0.0 || spec.weight.is_nan() {
            return Err(QuotaError::BadWeight(spec.name));
        }
        if self.specs.iter().any(|s| s.name == spec.name) {
            return Err(QuotaError::Duplicate(spec.name));
        }
        self.specs.push(spec);
        self.usage.push(Resources::default());
        self.history.push(Decayed::default());
        self.index_trees();
        Ok((self.specs.len() - 1) as QueueId)
    }

    /// Groups the queues by the root of their cohort path.
    fn index_trees(&mut self) {
        let mut roots: Vec<&str> = Vec::new();
        self.trees.clear();
        self.tree_of = vec![None; self.specs.len()];
        for (q, s) in self.specs.iter().enumerate() {
            let Some(root) = s.cohort.as_deref().map(share::root) else { continue };
            let t = roots.iter().position(|r| *r == root).unwrap_or_else(|| {
                roots.push(root);
                self.trees.push(Vec::new());
                roots.len() - 1
            });
            self.trees[t].push(q as QueueId);
            self.tree_of[q] = Some(t);
        }
        self.resum();
    }

    /// Replaces a queue's definition (usage stays).
    pub fn update(&mut self, q: QueueId, spec: QueueSpec) -> Result<(), QuotaError> {
        if spec.weight <= 0.0 || spec.weight.is_nan() {
            return Err(QuotaError::BadWeight(spec.name));
        }
        if self.specs.iter().enumerate().any(|(i, s)| i != q as usize && s.name == spec.name) {
            return Err(QuotaError::Duplicate(spec.name));
        }
        let slot = self.specs.get_mut(q as usize).ok_or(QuotaError::UnknownQueue(q))?;
        *slot = spec;
        self.index_trees();
        Ok(())
    }

    /// Whether `req` fits inside the queue's own nominal quota (grants included) at `now`, borrowing nothing.
    pub fn within_nominal(&self, q: QueueId, req: &Resources, now: Time) -> bool {
        self.usage
            .get(q as usize)
            .is_some_and(|u| req.flavors().all(|(f, v)| u.get(f) + v <= self.nominal(q, f, now)))
    }

    /// A queue's definition.
    pub fn spec(&self, q: QueueId) -> Option<&QueueSpec> {
        self.specs.get(q as usize)
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether there are no queues.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Usage now.
    pub fn usage(&self, q: QueueId) -> Resources {
        self.usage.get(q as usize).cloned().unwrap_or_default()
    }

    /// Adds a grant.
    pub fn grant(&mut self, g: Grant) {
        self.grants.push(g);
    }

    /// Drops grants that ended before `now`.
    pub fn expire(&mut self, now: Time) {
        self.grants.retain(|g| g.end > now);
    }

    /// Nominal quota at `now`: the definition plus active grants.
    pub fn nominal(&self, q: QueueId, f: Flavor, now: Time) -> u64 {
        let base = self.specs.get(q as usize).map_or(0, |s| s.nominal.get(f));
        base + self
            .grants
            .iter()
            .filter(|g| g.queue == q && g.flavor == f && g.active(now))
            .map(|g| g.amount)
            .sum::<u64>()
    }

    fn lendable(&self, q: QueueId, f: Flavor, now: Time) -> u64 {
        let n = self.nominal(q, f, now);
        self.specs[q as usize].lending_limit.as_ref().map_or(n, |l| l.get(f).min(n))
    }

    fn borrow_limit(&self, q: QueueId, f: Flavor) -> u64 {
        self.specs[q as usize].borrowing_limit.as_ref().map_or(u64::MAX, |b| b.get(f))
    }

    /// The queues that share quota with `q`: its whole cohort tree (none without a cohort).
    pub fn cohort_of(&self, q: QueueId) -> &[QueueId] {
        match self.tree_of.get(q as usize).copied().flatten() {
            Some(t) => &self.trees[t],
            None => &[],
        }
    }

    /// Whether `p` and `q` share quota (one cohort tree).
    pub fn same_tree(&self, p: QueueId, q: QueueId) -> bool {
        let t = |q: QueueId| self.tree_of.get(q as usize).copied().flatten();
        t(p).is_some() && t(p) == t(q)
    }

    /// Checks that `user` (if any) of queue `q` may take `req` at `now`: within the queue's nominal quota, or
    /// borrowing within its borrowing limit from what its cohort lends, and within the queue's per-user limit.
    /// Returns the first short flavor otherwise.
    pub fn fits(
        &self,
        q: QueueId,
        user: Option<UserId>,
        req: &Resources,
        now: Time,
    ) -> Result<(), QuotaShortfall> {
        self.fits_queue(q, req, now)?;
        self.fits_user(q, user, req)
    }

    fn fits_user(&self, q: QueueId, user: Option<UserId>, req: &Resources) -> Result<(), QuotaShortfall> {
        let (Some(u), Some(limit)) = (user, self.specs.get(q as usize).and_then(|s| s.user_limit.as_ref()))
        else {
            return Ok(());
        };
        let held = self.users.get(&(q, u));
        for (f, need) in req.flavors() {
            let max = limit.get(f);
            if max == 0 {
                continue;
            }
            let used = held.map_or(0, |h| h.get(f));
            if used + need > max {
                return Err(QuotaShortfall {
                    queue: q,
                    flavor: f,
                    needed: need,
                    left: max.saturating_sub(used),
                    cohort_can_lend: 0,
                    within_nominal: false,
                    user: Some(u),
                });
            }
        }
        Ok(())
    }

    fn fits_queue(&self, q: QueueId, req: &Resources, now: Time) -> Result<(), QuotaShortfall> {
        if q as usize >= self.specs.len() {
            let (flavor, needed) = req.flavors().next().unwrap_or((Flavor::Cpu, 0));
            return Err(QuotaShortfall {
                queue: q,
                flavor,
                needed,
                left: 0,
                cohort_can_lend: 0,
                within_nominal: false,
                user: None,
            });
        }
        let solo = self.specs.get(q as usize).is_none_or(|s| s.cohort.is_none());
        for (f, need) in req.flavors() {
            let n = self.nominal(q, f, now);
            let used = self.usage[q as usize].get(f);
            let ok = if solo { used + need <= n } else { self.cohort_admits(q, f, need, now) };
            if !ok {
                // Only a refusal needs what the cohort could lend (a walk over the cohort per flavor).
                let left = n.saturating_sub(used);
                let borrowed = used.saturating_sub(n);
                let can_lend = if solo {
                    0
                } else {
                    self.unlent(q, f, now).min(self.borrow_limit(q, f).saturating_sub(borrowed))
                };
                return Err(QuotaShortfall {
                    queue: q,
                    flavor: f,
                    needed: need,
                    left,
                    cohort_can_lend: can_lend,
                    within_nominal: used + need <= n,
                    user: None,
                });
            }
        }
        Ok(())
    }

    /// What the other queues of `q`'s cohort could lend it of `f` at `now` (0 without a cohort), before `q`'s
    /// own borrowing limit.
    pub fn unlent(&self, q: QueueId, f: Flavor, now: Time) -> u64 {
        if self.specs.get(q as usize).is_none_or(|s| s.cohort.is_none()) {
            return 0;
        }
        let (pool, lent) = self.lending(q, f, now);
        let own = self
            .nominal(q, f, now)
            .saturating_sub(self.usage[q as usize].get(f))
            .min(self.lendable(q, f, now));
        pool.saturating_sub(lent).saturating_sub(own)
    }

    fn cohort_admits(&self, q: QueueId, f: Flavor, need: u64, now: Time) -> bool {
        let n = self.nominal(q, f, now);
        let used = self.usage[q as usize].get(f) + need;
        if used > n && used - n > self.borrow_limit(q, f) {
            return false;
        }
        // What the tree holds beyond what its queues keep, with q's own part as it would be once it holds `need` more.
        let (pool, above) = self.lending(q, f, now);
        let (u, kept) = (self.usage[q as usize].get(f), n - self.lendable(q, f, now));
        above - u.saturating_sub(kept) + (u + need).saturating_sub(kept) <= pool
    }

    /// Charges an admitted job's resources to its queue and its user.
    pub fn charge(&mut self, q: QueueId, user: Option<UserId>, req: &Resources) -> Result<(), QuotaError> {
        let before = self.usage.get(q as usize).ok_or(QuotaError::UnknownQueue(q))?.clone();
        self.usage[q as usize].add(req);
        self.shift_sums(q, &before);
        // Counted whether or not the queue limits users now, so that a limit set later starts from the truth.
        if let Some(u) = user {
            self.users.entry((q, u)).or_default().add(req);
        }
        Ok(())
    }

    /// Gives a finished or preempted job's resources back.
    pub fn release(&mut self, q: QueueId, user: Option<UserId>, req: &Resources) -> Result<(), QuotaError> {
        let before = self.usage.get(q as usize).ok_or(QuotaError::UnknownQueue(q))?.clone();
        self.usage[q as usize].sub(req);
        self.shift_sums(q, &before);
        if let Some(held) = user.and_then(|u| self.users.get_mut(&(q, u))) {
            held.sub(req);
        }
        Ok(())
    }

    /// The id of the user called `name` (numbered on first sight).
    pub fn user_id(&mut self, name: &str) -> UserId {
        if let Some(id) = self.user_ids.get(name) {
            return *id;
        }
        let id = self.user_names.len() as UserId;
        self.user_names.push(name.to_string());
        self.user_ids.insert(name.to_string(), id);
        id
    }

    /// A user's name (`#<id>` for an id never named).
    pub fn user_name(&self, id: UserId) -> String {
        self.user_names.get(id as usize).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// What `user` holds in queue `q` now.
    pub fn user_usage(&self, q: QueueId, user: UserId) -> Resources {
        self.users.get(&(q, user)).cloned().unwrap_or_default()
    }

    /// Whether the queue uses more than its nominal quota of some flavor at `now` (it is borrowing).
    pub fn is_borrowing(&self, q: QueueId, now: Time) -> bool {
        self.usage.get(q as usize).is_some_and(|u| u.flavors().any(|(f, v)| v > self.nominal(q, f, now)))
    }

    /// Whether `q` borrows in a main flavor of `of` (its GPU models; CPU for CPU-only work).
    pub fn borrows_in(&self, q: QueueId, of: &Resources, now: Time) -> bool {
        self.usage
            .get(q as usize)
            .is_some_and(|u| of.main_flavors().any(|f| u.get(f) > self.nominal(q, f, now)))
    }

    /// What `q` would borrow beyond its nominal quota, holding `plus` more, in the main flavors of `of` (summed).
    pub fn borrowed_in(&self, q: QueueId, of: &Resources, plus: &Resources, now: Time) -> u64 {
        self.usage.get(q as usize).map_or(0, |u| {
            of.main_flavors().map(|f| (u.get(f) + plus.get(f)).saturating_sub(self.nominal(q, f, now))).sum()
        })
    }

    /// Whether `q` would still hold at least its nominal quota in each main flavor of `of` without `less`.
    pub fn keeps_nominal(&self, q: QueueId, of: &Resources, less: &Resources, now: Time) -> bool {
        self.usage.get(q as usize).is_some_and(|u| {
            of.main_flavors().all(|f| u.get(f).saturating_sub(less.get(f)) >= self.nominal(q, f, now))
        })
    }
}

#[cfg(test)]
mod tests;
