//! The cluster the CLI talks to: a Kubernetes client from the kubeconfig, and reads and writes of Haiyun objects
//! with errors that say what is wrong in one line.

use haiyun_api::{ComputeJob, ComputePool, Queue, QuotaRequest};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

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
}

impl CliError {
    /// The exit code: 1 could not start, 2 bad input, 3 not found, 4 unreachable, 5 refused.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Start(_) => 1,
            CliError::Input(_) => 2,
            CliError::NotFound { .. } => 3,
            CliError::Unreachable(_) => 4,
            CliError::Refused(_) => 5,
        }
    }
}

/// Connects with the kubeconfig at `path`, else `KUBECONFIG` or the in-cluster config.
pub async fn connect(path: Option<&std::path::Path>) -> Result<Client, CliError> {
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
    config.read_timeout = Some(std::time::Duration::from_secs(15));
    Client::try_from(config).map_err(|e| CliError::Unreachable(e.to_string()))
}

fn api_error(kind: &'static str, name: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            CliError::NotFound { kind, name: name.into(), hint: String::new() }
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
    api.list(&ListParams::default()).await.map(|l| l.items).map_err(|e| api_error(kind, "", e))
}

impl Cluster {
    /// Objects in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Cluster { client, namespace: namespace.into() }
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
        self.jobs_api().get(name).await.map_err(|e| match api_error("ComputeJob", name, e) {
            CliError::NotFound { kind, name, .. } => {
                CliError::NotFound { kind, name, hint: format!(" in namespace {} (try -n)", self.namespace) }
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
