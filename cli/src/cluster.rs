//! The cluster the CLI talks to: a Kubernetes client from the kubeconfig, and reads and writes of Haiyun objects,
//! a job's pods and events, with errors that say what is wrong in one line.

use haiyun_api::{ComputeJob, ComputePool, JOB_NAME_LABEL, Queue, QuotaRequest};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::view::Tabular;

/// The label the batch/v1 Job controller puts on its pods.
pub const BATCH_JOB_LABEL: &str = "batch.kubernetes.io/job-name";

/// Why a command failed; each maps to an exit code scripts can rely on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a flag, a file, a value.
    #[error("{0}")]
    Input(String),
    /// The object does not exist.
    #[error("{kind} {name:?} not found{hint}")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where to look.
        hint: String,
    },
    /// The cluster cannot be reached or configured.
    #[error("cannot reach the cluster: {0} (check KUBECONFIG or --kubeconfig)")]
    Unreachable(String),
    /// The API server refused the request.
    #[error("the API server refused: {0}")]
    Refused(String),
    /// A server or process this command runs could not start (a port in use, a file it cannot write).
    #[error("failed to start: {0}")]
    Start(String),
    /// The audit trail does not verify.
    #[error("the audit trail does not verify: {0}")]
    Tampered(String),
}

impl CliError {
    /// The exit code: 1 could not start, 2 bad input, 3 not found, 4 unreachable, 5 refused, 6 an audit trail that
    /// does not verify.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Start(_) => 1,
            CliError::Input(_) => 2,
            CliError::NotFound { .. } => 3,
            CliError::Unreachable(_) => 4,
            CliError::Refused(_) => 5,
            CliError::Tampered(_) => 6,
        }
    }
}

/// Connects with the kubeconfig at `path`, else `KUBECONFIG` or the in-cluster config. A `streaming` client (for
/// `get -w` and `logs -f`) waits for data as long as it takes; others give up on a silent server after 15 s.
pub async fn connect(path: Option<&std::path::Path>, streaming: bool) -> Result<Client, CliError> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| CliError::Input(format!("--kubeconfig {}: {e}", p.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| CliError::Input(format!("--kubeconfig {}: {e}", p.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| CliError::Unreachable(e.to_string()))?,
    };
    let mut config = config;
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = (!streaming).then(|| std::time::Duration::from_secs(15));
    Client::try_from(config).map_err(|e| CliError::Unreachable(e.to_string()))
}

/// A client error as the CLI's: 404 is not found, other answers of the API server are refusals, the rest means the
/// cluster could not be reached.
pub fn api_error(kind: &'static str, name: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            CliError::NotFound { kind, name: name.into(), hint: String::new() }
        }
        // A server that is not Kubernetes' (the demo) may say no without a message: its code and what was asked.
        kube::Error::Api(s) if s.message.is_empty() => {
            let what = if name.is_empty() { kind.to_string() } else { format!("{kind} {name:?}") };
            CliError::Refused(format!("HTTP {} for {what}, with no reason given", s.code))
        }
        kube::Error::Api(s) => CliError::Refused(s.message),
        other => CliError::Unreachable(other.to_string()),
    }
}

/// The cluster's Haiyun objects.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// The namespace of namespaced objects.
    pub namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

async fn list<K>(api: Api<K>, kind: &'static str) -> Result<Vec<K>, CliError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let items =
        api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| api_error(kind, "", e))?;
    Ok(items.into_iter().map(tidy).collect())
}

/// The object without `metadata.managedFields`, which kubectl hides too: bookkeeping of the API server's.
pub fn tidy<K: Resource>(mut o: K) -> K {
    o.meta_mut().managed_fields = None;
    o
}

/// Where to look for an object that is not there.
pub fn not_found_hint<K: Tabular + Resource>(api: &Api<K>) -> String {
    match api.namespace() {
        Some(ns) => format!(" in namespace {ns} (try -n, or haiyun get {} to list them)", K::PLURAL),
        None => format!(" (haiyun get {} lists them)", K::PLURAL),
    }
}

/// A list that a server without the kind (the demo serves only Haiyun's) answers with 404: none.
fn optional<K>(
    r: Result<kube::core::ObjectList<K>, kube::Error>,
    kind: &'static str,
) -> Result<Vec<K>, CliError>
where
    K: Clone + Resource,
{
    match r {
        Ok(l) => Ok(l.items.into_iter().map(tidy).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(api_error(kind, "", e)),
    }
}

impl Cluster {
    /// Objects in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Cluster { client, namespace: namespace.into() }
    }

    /// Its client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn jobs_api(&self) -> Api<ComputeJob> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn requests_api(&self) -> Api<QuotaRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Every ComputeJob of the namespace.
    pub async fn jobs(&self) -> Result<Vec<ComputeJob>, CliError> {
        list(self.jobs_api(), "ComputeJob").await
    }

    /// One ComputeJob.
    pub async fn job(&self, name: &str) -> Result<ComputeJob, CliError> {
        self.get(&self.jobs_api(), name).await
    }

    /// A namespaced kind in the namespace.
    pub fn namespaced<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A kind in every namespace, or a cluster-wide kind.
    pub fn all<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = ()>,
    {
        Api::all(self.client.clone())
    }

    /// Every object of `api`.
    pub async fn list<K>(&self, api: Api<K>) -> Result<Vec<K>, CliError>
    where
        K: Tabular + kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        list(api, K::KIND).await
    }

    /// One object of `api`, or not found with where to look.
    pub async fn get<K>(&self, api: &Api<K>, name: &str) -> Result<K, CliError>
    where
        K: Tabular + kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        api.get(name).await.map(tidy).map_err(|e| match api_error(K::KIND, name, e) {
            CliError::NotFound { kind, name, .. } => {
                CliError::NotFound { kind, name, hint: not_found_hint::<K>(api) }
            }
            other => other,
        })
    }

    /// Every ComputePool.
    pub async fn pools(&self) -> Result<Vec<ComputePool>, CliError> {
        list(Api::all(self.client.clone()), "ComputePool").await
    }

    /// Every Queue.
    pub async fn queues(&self) -> Result<Vec<Queue>, CliError> {
        list(Api::all(self.client.clone()), "Queue").await
    }

    /// Every QuotaRequest of the namespace.
    pub async fn requests(&self) -> Result<Vec<QuotaRequest>, CliError> {
        list(self.requests_api(), "QuotaRequest").await
    }

    /// Deletes a ComputeJob (its pods and Service go with it: the job owns them).
    pub async fn delete_job(&self, name: &str) -> Result<(), CliError> {
        let api = self.jobs_api();
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match api_error("ComputeJob", name, e) {
                CliError::NotFound { kind, name, .. } => {
                    CliError::NotFound { kind, name, hint: not_found_hint::<ComputeJob>(&api) }
                }
                other => other,
            }),
        }
    }

    /// A job's pods: those labelled with its name, or, for a batch/v1 Job it stands for, the Job's.
    pub async fn pods_of(&self, job: &ComputeJob) -> Result<Vec<Pod>, CliError> {
        let selector = match &job.spec.batch_job {
            Some(b) => format!("{BATCH_JOB_LABEL}={b}"),
            None => format!("{JOB_NAME_LABEL}={}", job.name_any()),
        };
        let api: Api<Pod> = self.namespaced();
        let mut pods = optional(api.list(&ListParams::default().labels(&selector)).await, "Pod")?;
        pods.sort_by_key(ResourceExt::name_any);
        Ok(pods)
    }

    /// A job's events (events.k8s.io/v1 about it), in the order the server lists them.
    pub async fn events_of(&self, job: &ComputeJob) -> Result<Vec<Event>, CliError> {
        let name = job.name_any();
        let api: Api<Event> = self.namespaced();
        let fields = format!("regarding.kind=ComputeJob,regarding.name={name}");
        let events = optional(api.list(&ListParams::default().fields(&fields)).await, "Event")?;
        let about = |e: &Event| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(&name) && r.kind.as_deref().is_none_or(|k| k == "ComputeJob")
            })
        };
        Ok(events.into_iter().filter(about).collect())
    }

    /// A pod's client, for its logs.
    pub fn pods(&self) -> Api<Pod> {
        self.namespaced()
    }

    /// Creates a ComputeJob.
    pub async fn create_job(&self, job: &ComputeJob) -> Result<ComputeJob, CliError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        self.jobs_api()
            .create(&PostParams::default(), job)
            .await
            .map_err(|e| api_error("ComputeJob", &name, e))
    }

    /// Creates a QuotaRequest.
    pub async fn create_request(&self, r: &QuotaRequest) -> Result<QuotaRequest, CliError> {
        let name = r.metadata.name.clone().unwrap_or_default();
        self.requests_api()
            .create(&PostParams::default(), r)
            .await
            .map_err(|e| api_error("QuotaRequest", &name, e))
    }

    /// Sets a QuotaRequest's decision (the API server checks the caller may `approve` on its queue).
    pub async fn decide(&self, name: &str, decision: &str) -> Result<QuotaRequest, CliError> {
        let patch = serde_json::json!({"spec": {"decision": decision}});
        self.requests_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("QuotaRequest", name, e))
    }
}
