//! What the index converted, kept between cycles: the GPU model table (append-only, so ids stay stable), the quota
//! book while its queues and requests are unchanged, and each ComputeJob's core job while its spec and what it may
//! reference are unchanged. A cycle with nothing new converts nothing again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use haiyun_api::{ComputeJob, Queue, QuotaRequest};
use haiyun_scheduler::model::{Cluster, GpuModels, PoolId};
use kube::ResourceExt;

use super::job::{self, Refs};
use super::queue::{self, Book};
use super::{Converted, Objects};

/// What a queue or request was when the book was built: uid, generation and (requests) the state that decides
/// whether it counts.
type Version = (String, i64, String);

/// What a job's conversion depends on besides the job: queue and dataset ids, the queues' namespaces, and each
/// pool's name, kind, site, batch scripts and time limit.
#[derive(Debug, Clone, PartialEq, Default)]
struct RefsKey {
    queues: BTreeMap<String, u32>,
    invalid: BTreeMap<String, String>,
    namespaces: BTreeMap<String, Vec<String>>,
    datasets: BTreeMap<String, u32>,
    access: BTreeMap<String, haiyun_api::dataset::DataAccess>,
    pools: Vec<(String, String, String)>,
    scripts: BTreeSet<PoolId>,
    time_limits: BTreeMap<PoolId, u32>,
    preempt_inference: BTreeSet<String>,
    storage: super::storage::Storage,
}

/// The index's conversions, kept between cycles.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// GPU model names, append-only for the life of the process.
    models: GpuModels,
    /// The quota book and what it was built from.
    book: Option<(Vec<Version>, Book)>,
    /// What the cached conversions were made against, and its stamp.
    refs: Option<RefsKey>,
    stamp: u64,
    /// Each ComputeJob's conversion by uid: its generation, the refs stamp, and the result.
    jobs: HashMap<String, (i64, u64, Converted)>,
    /// Jobs converted, and quota books built, since the process started.
    conversions: u64,
    books: u64,
}

impl Cache {
    /// Jobs converted and quota books built so far (a cycle with nothing new adds neither).
    pub fn work_done(&self) -> (u64, u64) {
        (self.conversions, self.books)
    }

    /// The model table to build the federation on (ids of earlier cycles stay).
    pub fn models(&self) -> GpuModels {
        self.models.clone()
    }

    /// The quota book of these queues and requests: the kept one while they are unchanged.
    pub fn book(&mut self, objects: &Objects, models: &mut GpuModels) -> Book {
        let versions = versions(&objects.queues, &objects.requests);
        if let Some((v, b)) = &self.book {
            if *v == versions {
                // Its flavors' models are in the kept table already.
                return b.clone();
            }
        }
        let queues: Vec<&Queue> = objects.queues.iter().map(|p| p.as_ref()).collect();
        let requests: Vec<&QuotaRequest> = objects.requests.iter().map(|p| p.as_ref()).collect();
        let book = queue::book(&queues, &requests, models);
        self.books += 1;
        self.book = Some((versions, book.clone()));
        book
    }

    /// Every ComputeJob's core job (`None` when done), converted again only when its spec or what it may reference
    /// changed; GPU models conversion interns go into `cluster` and the kept table.
    pub fn convert(
        &mut self,
        jobs: &[&Arc<ComputeJob>],
        refs: &Refs<'_>,
        cluster: &mut Cluster,
    ) -> Vec<(Arc<ComputeJob>, Converted)> {
        let key = refs_key(refs, cluster);
        if self.refs.as_ref() != Some(&key) {
            self.refs = Some(key);
            self.stamp += 1;
        }
        let live: std::collections::HashSet<&str> =
            jobs.iter().filter_map(|j| j.metadata.uid.as_deref()).collect();
        self.jobs.retain(|uid, _| live.contains(uid.as_str()));
        let out = jobs
            .iter()
            .map(|cj| {
                let uid = cj.metadata.uid.as_deref().unwrap_or_default();
                let generation = cj.metadata.generation.unwrap_or(0);
                let terminal = job::is_terminal(cj);
                let conv = match self.jobs.get(uid) {
                    Some((g, s, c)) if *g == generation && *s == self.stamp && c.is_none() == terminal => {
                        c.clone()
                    }
                    _ => {
                        let c = (!terminal).then(|| job::core_job(cj, refs, cluster));
                        self.conversions += 1;
                        self.jobs.insert(uid.to_owned(), (generation, self.stamp, c.clone()));
                        c
                    }
                };
                ((*cj).clone(), conv)
            })
            .collect();
        self.models = cluster.models.clone();
        out
    }
}

fn versions(queues: &[Arc<Queue>], requests: &[Arc<QuotaRequest>]) -> Vec<Version> {
    let mut v: Vec<Version> = queues
        .iter()
        .map(|q| (q.uid().unwrap_or_else(|| q.name_any()), q.metadata.generation.unwrap_or(0), String::new()))
        .collect();
    v.extend(requests.iter().map(|r| {
        let state = r.status.as_ref().map(|s| format!("{:?}", s.state)).unwrap_or_default();
        (r.uid().unwrap_or_else(|| r.name_any()), r.metadata.generation.unwrap_or(0), state)
    }));
    v.sort();
    v
}

fn refs_key(refs: &Refs<'_>, cluster: &Cluster) -> RefsKey {
    RefsKey {
        queues: refs.queues.clone(),
        invalid: refs.invalid_queues.clone(),
        namespaces: refs.namespaces.clone(),
        datasets: refs.datasets.clone(),
        access: refs.access.clone(),
        pools: cluster
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.kind.as_str().to_string(), p.site.clone()))
            .collect(),
        scripts: refs.scripts.clone(),
        time_limits: refs.time_limits.clone(),
        preempt_inference: refs.preempt_inference.clone(),
        storage: refs.storage.clone(),
    }
}
