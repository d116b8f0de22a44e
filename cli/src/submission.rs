//! A ComputeJob to submit: read from a YAML file, or made from flags for the common case (one task group running an
//! image, or a batch script for a Slurm pool).

use haiyun_api::ComputeJob;
use serde_json::json;

use crate::cluster::CliError;

/// The common case, from flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JobFlags {
    /// Job name.
    #[arg(long)]
    pub name: Option<String>,
    /// The Queue it goes to.
    #[arg(long)]
    pub queue: Option<String>,
    /// GPUs per task (0–32).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub gpus: i64,
    /// Tasks (placed all or nothing).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub replicas: i64,
    /// Container image each task runs (a Kubernetes pool).
    #[arg(long)]
    pub image: Option<String>,
    /// A batch script file (a Slurm pool).
    #[arg(long)]
    pub script: Option<std::path::PathBuf>,
    /// How long it runs, e.g. `90m` or `2h`.
    #[arg(long)]
    pub runtime: Option<String>,
    /// Priority within its queue.
    #[arg(long)]
    pub priority: Option<i32>,
}

/// Reads a ComputeJob from YAML text (`what` names the source in errors).
pub fn from_yaml(text: &str, what: &str) -> Result<ComputeJob, CliError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| CliError::Input(format!("{what}: not YAML: {e}")))?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    if kind != "ComputeJob" {
        return Err(CliError::Input(format!("{what}: kind is {kind:?}; write kind: ComputeJob")));
    }
    serde_yaml::from_value(value).map_err(|e| CliError::Input(format!("{what}: {e}")))
}

/// Makes a ComputeJob from flags; says which flag is missing or wrong.
pub fn from_flags(f: &JobFlags, namespace: &str) -> Result<ComputeJob, CliError> {
    let input = |m: &str| CliError::Input(m.to_string());
    let name = f.name.clone().ok_or_else(|| input("--name is required (or give -f FILE)"))?;
    let queue = f.queue.clone().ok_or_else(|| input("--queue is required: the Queue the job goes to"))?;
    if !(0..=32).contains(&f.gpus) {
        return Err(CliError::Input(format!(
            "--gpus {} is out of range: give 0 to 32 GPUs per task",
            f.gpus
        )));
    }
    if f.replicas < 1 {
        return Err(CliError::Input(format!("--replicas {} is out of range: give at least 1", f.replicas)));
    }
    if let Some(r) = &f.runtime {
        if haiyun_api::quantity::seconds(r).is_none() {
            return Err(CliError::Input(format!("--runtime {r:?} is not a duration: write e.g. 90m or 2h")));
        }
    }
    let mut group = json!({"name": "main", "replicas": f.replicas, "gpus": f.gpus});
    let kind = match (&f.image, &f.script) {
        (Some(image), None) => {
            group["template"] = json!({"spec": {"containers": [{"name": "main", "image": image}]}});
            "training"
        }
        (None, Some(path)) => {
            let script = std::fs::read_to_string(path)
                .map_err(|e| CliError::Input(format!("--script {}: {e}", path.display())))?;
            group["script"] = json!(script);
            "hpc-batch"
        }
        (Some(_), Some(_)) => return Err(input("give --image or --script, not both")),
        (None, None) => return Err(input("give --image (a Kubernetes pool) or --script (a Slurm pool)")),
    };
    let mut spec = json!({"queue": queue, "kind": kind, "taskGroups": [group]});
    if let Some(r) = &f.runtime {
        spec["runtimeEstimate"] = json!(r);
    }
    if let Some(p) = f.priority {
        spec["priority"] = json!(p);
    }
    let job = json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    });
    serde_json::from_value(job).map_err(|e| CliError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_a_job_and_bad_flags_name_the_fix() {
        let f = JobFlags {
            name: Some("t".into()),
            queue: Some("q".into()),
            gpus: 8,
            replicas: 2,
            image: Some("img:1".into()),
            runtime: Some("2h".into()),
            ..Default::default()
        };
        let j = from_flags(&f, "ml").unwrap();
        assert_eq!(j.spec.task_groups[0].gpus, 8);
        assert_eq!(j.spec.runtime_estimate.as_deref(), Some("2h"));
        let e = from_flags(&JobFlags { queue: None, ..f.clone() }, "ml").unwrap_err();
        assert!(e.to_string().contains("--queue is required"));
        let e = from_flags(&JobFlags { gpus: 40, ..f.clone() }, "ml").unwrap_err();
        assert!(e.to_string().contains("--gpus 40 is out of range"));
        let e = from_flags(&JobFlags { gpus: -1, ..f.clone() }, "ml").unwrap_err();
        assert!(e.to_string().contains("--gpus -1 is out of range: give 0 to 32"));
        let e = from_flags(&JobFlags { runtime: Some("soon".into()), ..f.clone() }, "ml").unwrap_err();
        assert!(e.to_string().contains("90m or 2h"));
        let e = from_flags(&JobFlags { image: None, ..f }, "ml").unwrap_err();
        assert_eq!(e.code(), 2);
    }

    #[test]
    fn yaml_errors_name_the_file_and_the_problem() {
        let e = from_yaml("kind: ComputeJob\nspec: [", "job.yaml").unwrap_err();
        assert!(e.to_string().starts_with("job.yaml: not YAML"), "{e}");
        let e = from_yaml("kind: Pod\n", "job.yaml").unwrap_err();
        assert!(e.to_string().contains("write kind: ComputeJob"));
        let ok = "apiVersion: haiyun.io/v1alpha1\nkind: ComputeJob\nmetadata: {name: a}\nspec:\n  queue: q\n  taskGroups: [{name: w, replicas: 1, gpus: 1}]\n";
        assert_eq!(from_yaml(ok, "job.yaml").unwrap().spec.queue, "q");
    }
}
