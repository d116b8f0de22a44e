//! Warnings about our pods in a remote cluster (from its kubelets and scheduler: an image that cannot be pulled, a
//! volume that cannot be mounted), copied onto the job here, where its owner looks: that cluster's events are out of
//! their sight.

use futures::StreamExt;
use haiyun_api::{ComputeJob, JOB_NAME_LABEL, JOB_UID_LABEL};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashSet;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

/// A warning to copy onto a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The job's namespace.
    pub namespace: String,
    /// The job's name.
    pub job: String,
    /// The job's uid.
    pub uid: String,
    /// The event's reason there.
    pub reason: String,
    /// What it says, with the pod and where it runs.
    pub note: String,
}

/// When an event last happened (its series' last time), if it says.
fn last_seen(e: &CoreEvent) -> Option<jiff::Timestamp> {
    e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0))
}

/// The copy of warning `e` about one of our pods (in `pods`, of cluster `pool`), if it is one and is not older
/// than `since`.
pub fn copy_of(e: &CoreEvent, pods: &Store<Pod>, pool: &str, since: jiff::Timestamp) -> Option<Copied> {
    if e.type_.as_deref() != Some("Warning") || last_seen(e).is_some_and(|t| t < since) {
        return None;
    }
    let o = &e.involved_object;
    let pod = pods.get(&ObjectRef::new(o.name.as_deref()?).within(o.namespace.as_deref()?))?;
    let labels = pod.labels();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| format!("{pool}/-"));
    Some(Copied {
        namespace: pod.namespace()?,
        job: labels.get(JOB_NAME_LABEL)?.clone(),
        uid: labels.get(JOB_UID_LABEL)?.clone(),
        reason: e.reason.clone().unwrap_or_default(),
        note: format!("pod {} on {node}: {}", pod.name_any(), e.message.clone().unwrap_or_default()),
    })
}

/// Watches the warnings about pods in the cluster behind `client` and sends those about ours (each occurrence once)
/// to the copier.
pub fn watch(client: Client, pods: Store<Pod>, pool: String, tx: UnboundedSender<Copied>) -> JoinHandle<()> {
    // Only what happens from now on: a new link (or operator) does not copy a cluster's history again.
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5);
    let api: Api<CoreEvent> = Api::all(client);
    let config = watcher::Config::default().fields("involvedObject.kind=Pod,type=Warning");
    let stream = watcher(api, config).default_backoff().applied_objects();
    tokio::spawn(async move {
        let mut sent: HashSet<(String, i32)> = HashSet::new();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(e) = ev else { continue };
            let key = (e.uid().unwrap_or_default(), e.count.unwrap_or(1));
            if sent.contains(&key) {
                continue;
            }
            if let Some(c) = copy_of(&e, &pods, &pool, since) {
                sent.insert(key);
                if tx.send(c).is_err() {
                    return;
                }
            }
        }
    })
}

/// Publishes each copied warning on its job here, as `Remote<Reason>`.
pub async fn copy(client: Client, mut rx: UnboundedReceiver<Copied>) {
    let reporter = Reporter { controller: "haiyun-operator".into(), instance: None };
    let recorder = Recorder::new(client, reporter);
    while let Some(c) = rx.recv().await {
        let reference = ObjectReference {
            api_version: Some(ComputeJob::api_version(&()).into_owned()),
            kind: Some(ComputeJob::kind(&()).into_owned()),
            name: Some(c.job.clone()),
            namespace: Some(c.namespace.clone()),
            uid: Some(c.uid.clone()),
            ..ObjectReference::default()
        };
        let reason: String = format!("Remote{}", c.reason).chars().take(128).collect();
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            note: Some(c.note.chars().take(1000).collect()),
            action: "Remote".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::debug!(job = %c.job, error = %e, "failed to copy a remote warning");
        }
    }
}

/// A channel for the copier; the sender goes to every link.
pub fn channel() -> (UnboundedSender<Copied>, UnboundedReceiver<Copied>) {
    tokio::sync::mpsc::unbounded_channel()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_warning_about_one_of_our_pods_is_copied_once_with_where_it_runs_and_others_are_not() {
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "t-worker-0", "namespace": "ml",
                         "labels": {JOB_NAME_LABEL: "t", JOB_UID_LABEL: "u1"}},
            "spec": {"nodeName": "lab/n1", "containers": []}
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
        let since = jiff::Timestamp::from_second(1_000).unwrap();
        let event = |name: &str, type_: &str, at: i64| -> CoreEvent {
            serde_json::from_value(json!({
                "metadata": {"name": "e", "namespace": "ml"}, "type": type_, "reason": "ErrImageNeverPull",
                "message": "image is not present", "lastTimestamp": jiff::Timestamp::from_second(at).unwrap().to_string(),
                "involvedObject": {"kind": "Pod", "name": name, "namespace": "ml"}
            }))
            .unwrap()
        };
        let c = copy_of(&event("t-worker-0", "Warning", 2_000), &store, "lab", since).unwrap();
        assert_eq!((c.job.as_str(), c.uid.as_str(), c.namespace.as_str()), ("t", "u1", "ml"));
        assert_eq!(c.note, "pod t-worker-0 on lab/n1: image is not present");
        assert!(copy_of(&event("other", "Warning", 2_000), &store, "lab", since).is_none(), "not our pod");
        assert!(
            copy_of(&event("t-worker-0", "Normal", 2_000), &store, "lab", since).is_none(),
            "not a warning"
        );
        assert!(copy_of(&event("t-worker-0", "Warning", 10), &store, "lab", since).is_none(), "from before");
    }
}
