//! Which datasets a pod's volumes hold: a claim by the PersistentVolume it is bound to (its name, CSI volume handle
//! or NFS export, never the claim's own name), an inline NFS volume by its export.

use std::collections::BTreeMap;
use std::sync::Arc;

use haiyun_api::Dataset;
use haiyun_api::dataset::{CsiVolume, NfsExport};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Volume};
use kube::ResourceExt;

/// Storage that holds a dataset: the dataset, and the volume's identity for people.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holding {
    /// The dataset.
    pub dataset: String,
    /// What the volume is, e.g. `PersistentVolume census-pv (NFS 10.0.0.5:/exports/census)`.
    pub what: String,
}

/// A volume that mounts a dataset its job does not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnamed {
    /// The volume's name in the pod.
    pub volume: String,
    /// What it holds.
    pub holding: Holding,
}

/// Every dataset's storage, and the claims bound to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// Claims (namespace, name) bound to a dataset's storage.
    claims: BTreeMap<(String, String), Holding>,
    /// NFS exports of datasets: (server, path, dataset).
    nfs: Vec<(String, String, String)>,
}

/// Whether `path` is `export` or under it.
fn under(path: &str, export: &str) -> bool {
    let export = export.trim_end_matches('/');
    path == export || path.starts_with(&format!("{export}/")) || export.is_empty()
}

/// The dataset a PersistentVolume holds, if any (the first by name).
fn held_by(pv: &PersistentVolume, datasets: &[&Dataset]) -> Option<Holding> {
    let spec = pv.spec.as_ref();
    let csi = spec.and_then(|s| s.csi.as_ref());
    let nfs = spec.and_then(|s| s.nfs.as_ref());
    let name = pv.name_any();
    for d in datasets {
        let Some(st) = d.spec.storage.as_ref() else { continue };
        let by_name = st.persistent_volumes.contains(&name);
        let by_csi = csi.is_some_and(|c| {
            st.csi.contains(&CsiVolume { driver: c.driver.clone(), volume_handle: c.volume_handle.clone() })
        });
        let by_nfs =
            nfs.is_some_and(|n| st.nfs.iter().any(|e| e.server == n.server && under(&n.path, &e.path)));
        if by_name || by_csi || by_nfs {
            let how = match (csi, nfs) {
                (Some(c), _) => format!(" (CSI {} {})", c.driver, c.volume_handle),
                (None, Some(n)) => format!(" (NFS {}:{})", n.server, n.path),
                _ => String::new(),
            };
            return Some(Holding { dataset: d.name_any(), what: format!("PersistentVolume {name}{how}") });
        }
    }
    None
}

impl Storage {
    /// Indexes the datasets' storage and the claims bound to it.
    pub fn index(
        datasets: &[Arc<Dataset>],
        volumes: &[Arc<PersistentVolume>],
        claims: &[Arc<PersistentVolumeClaim>],
    ) -> Self {
        let mut sorted: Vec<&Dataset> =
            datasets.iter().map(|d| d.as_ref()).filter(|d| d.spec.storage.is_some()).collect();
        if sorted.is_empty() {
            return Storage::default();
        }
        sorted.sort_by_key(|d| d.name_any());
        let held: BTreeMap<String, Holding> =
            volumes.iter().filter_map(|pv| Some((pv.name_any(), held_by(pv, &sorted)?))).collect();
        let claims = claims
            .iter()
            .filter_map(|c| {
                let volume = c.spec.as_ref()?.volume_name.as_ref()?;
                Some(((c.namespace()?, c.name_any()), held.get(volume)?.clone()))
            })
            .collect();
        let nfs = sorted
            .iter()
            .flat_map(|d| {
                let exports: &[NfsExport] = d.spec.storage.as_ref().map_or(&[], |s| &s.nfs);
                exports.iter().map(|e| (e.server.clone(), e.path.clone(), d.name_any()))
            })
            .collect();
        Storage { claims, nfs }
    }

    /// The first of `volumes` (of a pod in `namespace`) that mounts a dataset `named` does not include.
    pub fn unnamed(&self, namespace: &str, volumes: &[Volume], named: &[String]) -> Option<Unnamed> {
        if self.claims.is_empty() && self.nfs.is_empty() {
            return None;
        }
        volumes.iter().find_map(|v| {
            let holding = if let Some(pvc) = &v.persistent_volume_claim {
                self.claims.get(&(namespace.to_string(), pvc.claim_name.clone())).cloned()
            } else if let Some(n) = &v.nfs {
                self.nfs.iter().find(|(s, p, _)| *s == n.server && under(&n.path, p)).map(|(_, _, d)| {
                    Holding { dataset: d.clone(), what: format!("NFS {}:{}", n.server, n.path) }
                })
            } else {
                None
            }?;
            (!named.contains(&holding.dataset)).then(|| Unnamed { volume: v.name.clone(), holding })
        })
    }
}

/// The volumes of a pod template given as JSON (a ComputeJob's task group), or none where it has none.
pub fn template_volumes(template: Option<&serde_json::Value>) -> Result<Vec<Volume>, String> {
    match template.and_then(|t| t.get("spec")).and_then(|s| s.get("volumes")) {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dataset(storage: serde_json::Value) -> Arc<Dataset> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "Dataset", "metadata": { "name": "census" },
                "spec": { "size": "1Ti", "classification": "core", "storage": storage }
            }))
            .unwrap(),
        )
    }

    fn pv(name: &str, source: serde_json::Value) -> Arc<PersistentVolume> {
        let mut spec = json!({ "capacity": { "storage": "1Ti" }, "accessModes": ["ReadOnlyMany"] });
        for (k, v) in source.as_object().unwrap() {
            spec[k] = v.clone();
        }
        Arc::new(serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec })).unwrap())
    }

    fn claim(ns: &str, name: &str, volume: &str) -> Arc<PersistentVolumeClaim> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": ns },
                "spec": { "volumeName": volume, "accessModes": ["ReadOnlyMany"] }
            }))
            .unwrap(),
        )
    }

    fn volumes(v: serde_json::Value) -> Vec<Volume> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_claim_is_known_by_the_volume_it_is_bound_to_not_its_name() {
        let storage = Storage::index(
            &[dataset(json!({ "csi": [{ "driver": "nfs.csi.k8s.io", "volumeHandle": "nas#census" }] }))],
            &[
                pv("pv-7f3a", json!({ "csi": { "driver": "nfs.csi.k8s.io", "volumeHandle": "nas#census" } })),
                pv("pv-other", json!({ "csi": { "driver": "nfs.csi.k8s.io", "volumeHandle": "nas#roads" } })),
            ],
            &[
                claim("ns", "scratch", "pv-7f3a"),
                claim("ns", "census", "pv-other"),
                claim("other", "x", "pv-7f3a"),
            ],
        );
        let pod = volumes(json!([
            { "name": "data", "persistentVolumeClaim": { "claimName": "census" } },
            { "name": "tmp", "persistentVolumeClaim": { "claimName": "scratch" } }
        ]));
        let got = storage.unnamed("ns", &pod, &[]).unwrap();
        assert_eq!(
            got.volume, "tmp",
            "the claim named census holds another volume; scratch holds the dataset"
        );
        assert_eq!(got.holding.what, "PersistentVolume pv-7f3a (CSI nfs.csi.k8s.io nas#census)");
        assert_eq!(
            storage.unnamed("ns", &pod, &["census".into()]),
            None,
            "named: the dataset's own checks apply"
        );
        assert!(storage.unnamed("elsewhere", &pod, &[]).is_none(), "claims are per namespace");
    }

    #[test]
    fn an_nfs_export_holds_every_path_under_it_inline_or_behind_a_claim() {
        let ds = dataset(json!({ "nfs": [{ "server": "10.0.0.5", "path": "/exports/census/" }] }));
        let storage = Storage::index(
            &[ds],
            &[pv("nfs-pv", json!({ "nfs": { "server": "10.0.0.5", "path": "/exports/census/2020" } }))],
            &[claim("ns", "c", "nfs-pv")],
        );
        let inline = volumes(
            json!([{ "name": "raw", "nfs": { "server": "10.0.0.5", "path": "/exports/census/2020/a" } }]),
        );
        assert_eq!(
            storage.unnamed("ns", &inline, &[]).unwrap().holding.what,
            "NFS 10.0.0.5:/exports/census/2020/a"
        );
        let sibling =
            volumes(json!([{ "name": "raw", "nfs": { "server": "10.0.0.5", "path": "/exports/census2" } }]));
        assert!(storage.unnamed("ns", &sibling, &[]).is_none(), "a sibling path is not under the export");
        let claimed = volumes(json!([{ "name": "d", "persistentVolumeClaim": { "claimName": "c" } }]));
        assert_eq!(storage.unnamed("ns", &claimed, &[]).unwrap().holding.dataset, "census");
    }

    #[test]
    fn a_volume_listed_by_name_is_the_datasets_and_no_storage_means_no_work() {
        let storage = Storage::index(
            &[dataset(json!({ "persistentVolumes": ["census-pv"] }))],
            &[pv("census-pv", json!({ "hostPath": { "path": "/d" } }))],
            &[claim("ns", "c", "census-pv")],
        );
        let claimed = volumes(json!([{ "name": "d", "persistentVolumeClaim": { "claimName": "c" } }]));
        assert_eq!(storage.unnamed("ns", &claimed, &[]).unwrap().holding.what, "PersistentVolume census-pv");
        assert_eq!(Storage::index(&[], &[], &[]), Storage::default());
    }
}
