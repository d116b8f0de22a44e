//! Builders of Haiyun's objects for tests (feature `fixtures`), shared by the operator's unit and integration tests:
//! `job("ns", "train").queue("llm").gpus(8).replicas(2).runtime("10m")`, then `.value()` for the API server or
//! `.build()` for the typed object. Fields left unset are left out, so the API server's defaults apply.

use serde_json::{Value, json};

use crate::{ComputeJob, ComputePool, Queue};

/// Reads a built value as a typed object.
///
/// # Panics
/// When the value is not an object of that kind (a fixture is wrong).
#[allow(clippy::expect_used)]
fn typed<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a fixture builds a valid object")
}

/// A ComputePool under construction.
#[derive(Debug, Clone)]
pub struct PoolBuilder(Value);

/// A pool named `name`, of kind `ai`, with public clearance and no backend yet.
pub fn pool(name: &str) -> PoolBuilder {
    PoolBuilder(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": name },
        "spec": { "kind": "ai", "backend": {} }
    }))
}

impl PoolBuilder {
    /// Its kind: hpc, ai, general or edge.
    pub fn kind(mut self, kind: &str) -> Self {
        self.0["spec"]["kind"] = json!(kind);
        self
    }

    /// Its site.
    pub fn site(mut self, site: &str) -> Self {
        self.0["spec"]["site"] = json!(site);
        self
    }

    /// The highest data classification it may hold.
    pub fn clearance(mut self, clearance: &str) -> Self {
        self.0["spec"]["clearance"] = json!(clearance);
        self
    }

    /// Nodes of this cluster whose labels match `selector`.
    pub fn kubernetes(mut self, selector: &[(&str, &str)]) -> Self {
        let sel: serde_json::Map<String, Value> =
            selector.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.0["spec"]["backend"] = json!({ "kubernetes": { "nodeSelector": sel } });
        self
    }

    /// Nodes of another cluster whose labels match `selector`, its kubeconfig in the Secret `secret`.
    pub fn remote(mut self, secret: &str, selector: &[(&str, &str)]) -> Self {
        let sel: serde_json::Map<String, Value> =
            selector.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.0["spec"]["backend"] =
            json!({ "remoteKubernetes": { "secretName": secret, "nodeSelector": sel } });
        self
    }

    /// A capacity lease of `gpus` GPUs for the remote (edge) site, charged to `queue`, good `seconds` without renewal.
    pub fn autonomy(mut self, queue: &str, gpus: u32, seconds: u32) -> Self {
        self.0["spec"]["backend"]["remoteKubernetes"]["autonomy"] =
            json!({ "queue": queue, "gpus": gpus, "leaseSeconds": seconds });
        self
    }

    /// Marks a pool of this cluster as an edge site's own: its GPUs are used only within granted capacity leases.
    pub fn granted(mut self) -> Self {
        self.0["spec"]["backend"]["kubernetes"]["granted"] = json!(true);
        self
    }

    /// A Slurm cluster at `endpoint`, partition `partition`, its token in the Secret `secret`.
    pub fn slurm(mut self, endpoint: &str, partition: &str, secret: &str) -> Self {
        self.0["spec"]["backend"] =
            json!({ "slurm": { "endpoint": endpoint, "partition": partition, "tokenSecret": secret } });
        self
    }

    /// `count` simulated nodes of `gpus` GPUs of `model`, 64 cores and 512 GiB each.
    pub fn simulated(mut self, count: u32, gpus: u32, model: &str) -> Self {
        self.0["spec"]["backend"] = json!({ "simulated": { "nodes": [
            { "count": count, "gpus": gpus, "gpuModel": model, "cpu": "64", "memory": "512Gi" }] } });
        self
    }

    /// As JSON, for the API server.
    pub fn value(self) -> Value {
        self.0
    }

    /// As the typed object.
    pub fn build(self) -> ComputePool {
        typed(self.0)
    }
}

/// A Queue under construction.
#[derive(Debug, Clone)]
pub struct QueueBuilder(Value);

/// A queue named `name` with no quota yet.
pub fn queue(name: &str) -> QueueBuilder {
    QueueBuilder(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": name },
        "spec": { "resources": [] }
    }))
}

impl QueueBuilder {
    /// A nominal quota of `nominal` (a quantity) of `flavor` (`cpu`, `memory`, `nvidia.com/gpu:<model>`).
    pub fn quota(mut self, flavor: &str, nominal: &str) -> Self {
        if let Some(list) = self.0["spec"]["resources"].as_array_mut() {
            list.push(json!({ "flavor": flavor, "nominal": nominal }));
        }
        self
    }

    /// Its cohort.
    pub fn cohort(mut self, cohort: &str) -> Self {
        self.0["spec"]["cohort"] = json!(cohort);
        self
    }

    /// As JSON, for the API server.
    pub fn value(self) -> Value {
        self.0
    }

    /// As the typed object.
    pub fn build(self) -> Queue {
        typed(self.0)
    }
}

/// A ComputeJob under construction: one task group `w` of one replica, no GPUs, until told otherwise.
#[derive(Debug, Clone)]
pub struct JobBuilder(Value);

/// A job `name` in `namespace`, in queue `q`.
pub fn job(namespace: &str, name: &str) -> JobBuilder {
    JobBuilder(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "queue": "q", "taskGroups": [{ "name": "w", "replicas": 1 }] }
    }))
}

impl JobBuilder {
    fn group(&mut self) -> &mut Value {
        &mut self.0["spec"]["taskGroups"][0]
    }

    /// Its queue.
    pub fn queue(mut self, queue: &str) -> Self {
        self.0["spec"]["queue"] = json!(queue);
        self
    }

    /// Its task group's name.
    pub fn group_name(mut self, name: &str) -> Self {
        self.group()["name"] = json!(name);
        self
    }

    /// Tasks in its group.
    pub fn replicas(mut self, n: u32) -> Self {
        self.group()["replicas"] = json!(n);
        self
    }

    /// Whole GPUs per task.
    pub fn gpus(mut self, n: u32) -> Self {
        self.group()["gpus"] = json!(n);
        self
    }

    /// CPU and memory per task (quantities).
    pub fn resources(mut self, cpu: &str, memory: &str) -> Self {
        self.group()["cpu"] = json!(cpu);
        self.group()["memory"] = json!(memory);
        self
    }

    /// Its pod template.
    pub fn template(mut self, template: Value) -> Self {
        self.group()["template"] = template;
        self
    }

    /// Its runtime estimate (a duration such as `10m`).
    pub fn runtime(mut self, estimate: &str) -> Self {
        self.0["spec"]["runtimeEstimate"] = json!(estimate);
        self
    }

    /// Any other spec fields (merged over what is set).
    pub fn spec(mut self, extra: Value) -> Self {
        if let (Some(s), Some(e)) = (self.0["spec"].as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        self
    }

    /// Metadata the API server would set: uid, generation 1, created at `created` (unix seconds).
    pub fn stored(mut self, uid: &str, created: i64) -> Self {
        let m = &mut self.0["metadata"];
        m["uid"] = json!(uid);
        m["generation"] = json!(1);
        m["creationTimestamp"] = json!(rfc3339(created));
        self
    }

    /// As JSON, for the API server.
    pub fn value(self) -> Value {
        self.0
    }

    /// As the typed object.
    pub fn build(self) -> ComputeJob {
        typed(self.0)
    }
}

/// Unix seconds as RFC 3339 (UTC); the epoch for a time out of range.
fn rfc3339(t: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(t).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_build_valid_objects() {
        let j = job("ns", "a")
            .queue("llm")
            .gpus(8)
            .replicas(2)
            .runtime("10m")
            .stored("uid-a", 1_800_000_000)
            .build();
        assert_eq!(j.spec.queue, "llm");
        assert_eq!((j.spec.task_groups[0].gpus, j.spec.task_groups[0].replicas), (8, 2));
        assert_eq!(
            j.metadata.creation_timestamp.map(|t| t.0.as_second()),
            Some(1_800_000_000),
            "the creation time survives the round trip"
        );
        let p = pool("p").kind("hpc").clearance("core").simulated(2, 8, "h100").build();
        assert!(p.spec.backend.simulated.is_some());
        let q = queue("q").quota("nvidia.com/gpu:h100", "16").cohort("c").build();
        assert_eq!((q.spec.resources.len(), q.spec.cohort.as_deref()), (1, Some("c")));
    }
}
