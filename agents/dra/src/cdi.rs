//! The CDI spec of a prepared claim: one CDI device per claim whose edits give the container exactly its GPUs (by
//! UUID in the environment, and their device nodes where the node has them) and, for a share, its MPS limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::allocation::Grant;
use crate::{CDI_KIND, Slot};

/// The CDI spec version written (containerd 2 and CRI-O read it).
const CDI_VERSION: &str = "0.6.0";
/// Control devices every CUDA process opens, given with the GPUs where the node has them.
const CONTROL_DEVICES: [&str; 4] =
    ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"];

/// Why a spec could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A granted device is not on this node now.
    #[error("device {0} is not present on this node (the probe does not list it)")]
    Missing(u32),
    /// The spec file could not be written or removed.
    #[error("failed to {what} CDI spec {path}: {source}")]
    File {
        /// Write or remove.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The fully qualified CDI device id of a claim's device.
pub fn device_id(claim_uid: &str) -> String {
    format!("{CDI_KIND}={claim_uid}")
}

/// The spec file of a claim in `dir`.
pub fn path(dir: &Path, claim_uid: &str) -> PathBuf {
    dir.join(format!("{}_{claim_uid}.json", CDI_KIND.replace('/', "-")))
}

/// The spec for a claim's grants; `dev` is where device nodes are looked for (`/dev` on a node), `mps` the host pipe
/// directory of each shared GPU's MPS daemon, by slot.
pub fn spec(
    claim_uid: &str,
    grants: &[Grant],
    gpus: &BTreeMap<u32, Slot>,
    dev: &Path,
    mps: &BTreeMap<u32, std::path::PathBuf>,
) -> Result<Value, CdiError> {
    let mut uuids = Vec::new();
    let mut nodes = Vec::new();
    let mut env = Vec::new();
    let mut mounts = Vec::new();
    for (ordinal, g) in grants.iter().enumerate() {
        let info = gpus.get(&g.index).ok_or(CdiError::Missing(g.index))?;
        uuids.push(info.uuid.clone());
        // Looked for under `dev` (the host's /dev, wherever the driver sees it); named by its host path. A MIG
        // instance needs its GPU's node.
        let node = format!("nvidia{}", info.parent);
        if dev.join(&node).exists() && !nodes.iter().any(|n: &Value| n["path"] == format!("/dev/{node}")) {
            nodes.push(json!({ "path": format!("/dev/{node}") }));
        }
        if g.cores < 100 {
            let mib = info.memory_bytes / (1 << 20) * u64::from(g.cores) / 100;
            env.push(format!("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={}", g.cores));
            env.push(format!("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={ordinal}={mib}M"));
            env.push(format!("HAIYUN_GPU_SHARE_PERCENT={}", g.cores));
            if let Some(pipe) = mps.get(&g.index).filter(|_| mounts.is_empty()) {
                env.push(format!("CUDA_MPS_PIPE_DIRECTORY={}", crate::mps::CONTAINER_PIPE_DIR));
                mounts.push(json!({ "hostPath": pipe, "containerPath": crate::mps::CONTAINER_PIPE_DIR,
                                    "options": ["rbind", "rw"] }));
            }
        }
    }
    if !nodes.is_empty() {
        for c in CONTROL_DEVICES {
            if dev.join(c.trim_start_matches("/dev/")).exists() {
                nodes.push(json!({ "path": c }));
            }
        }
    }
    let list = uuids.join(",");
    env.splice(
        0..0,
        [
            format!("NVIDIA_VISIBLE_DEVICES={list}"),
            format!("CUDA_VISIBLE_DEVICES={list}"),
            format!("HAIYUN_GPU_UUIDS={list}"),
        ],
    );
    let mut edits = json!({ "env": env });
    if !nodes.is_empty() {
        edits["deviceNodes"] = Value::Array(nodes);
    }
    if !mounts.is_empty() {
        edits["mounts"] = Value::Array(mounts);
    }
    Ok(json!({
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [{ "name": claim_uid, "containerEdits": edits }],
    }))
}

/// Writes a claim's spec into `dir` (atomically: the runtime never reads half a file).
pub fn write(dir: &Path, claim_uid: &str, spec: &Value) -> Result<(), CdiError> {
    let target = path(dir, claim_uid);
    let err = |what, source| CdiError::File { what, path: target.clone(), source };
    std::fs::create_dir_all(dir).map_err(|e| err("write", e))?;
    let tmp = dir.join(format!(".{claim_uid}.tmp"));
    std::fs::write(&tmp, spec.to_string()).map_err(|e| err("write", e))?;
    std::fs::rename(&tmp, &target).map_err(|e| err("write", e))
}

/// Removes a claim's spec from `dir`, if there.
pub fn remove(dir: &Path, claim_uid: &str) -> Result<(), CdiError> {
    let target = path(dir, claim_uid);
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CdiError::File { what: "remove", path: target, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haiyun_agent::probe::GpuProbe;
    use haiyun_agent::probe::fake::FakeProbe;

    fn gpus() -> BTreeMap<u32, Slot> {
        slots_of("dgx-h100")
    }

    fn slots_of(profile: &str) -> BTreeMap<u32, Slot> {
        let inv = FakeProbe::profile(profile).unwrap().inventory().unwrap();
        crate::slots(&inv).into_iter().map(|s| (s.slot, s)).collect()
    }

    #[test]
    fn a_share_with_an_mps_daemon_gets_its_pipe_directory() {
        let mps: BTreeMap<u32, std::path::PathBuf> = [(1, "/state/mps/GPU-fake-h100-01/pipe".into())].into();
        let s = spec("u", &[grant(1, 50)], &gpus(), Path::new("/nonexistent"), &mps).unwrap();
        let edits = &s["devices"][0]["containerEdits"];
        assert!(
            edits["env"].as_array().unwrap().iter().any(|e| e == "CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps")
        );
        assert_eq!(edits["mounts"][0]["hostPath"], "/state/mps/GPU-fake-h100-01/pipe");
        assert_eq!(edits["mounts"][0]["containerPath"], "/run/nvidia-mps");
    }

    #[test]
    fn a_mig_instance_is_named_by_its_own_uuid() {
        let s =
            spec("u", &[grant(8, 100)], &slots_of("a100-mig"), Path::new("/nonexistent"), &BTreeMap::new())
                .unwrap();
        let env = s["devices"][0]["containerEdits"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e == "NVIDIA_VISIBLE_DEVICES=MIG-fake-a100-01-1"), "{env:?}");
    }

    fn grant(index: u32, cores: u32) -> Grant {
        Grant { request: "gpus".into(), index, cores, share_id: None }
    }

    #[test]
    fn names_exactly_the_granted_uuids_and_the_device_nodes_that_exist() {
        let dev = std::env::temp_dir().join(format!("haiyun-dra-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("nvidia5"), "").unwrap();
        std::fs::write(dev.join("nvidiactl"), "").unwrap();
        let s = spec("uid-1", &[grant(2, 100), grant(5, 100)], &gpus(), &dev, &BTreeMap::new()).unwrap();
        assert_eq!(s["kind"], "haiyun.io/gpu");
        assert_eq!(s["devices"][0]["name"], "uid-1");
        let edits = &s["devices"][0]["containerEdits"];
        let env: Vec<&str> = edits["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=GPU-fake-h100-02,GPU-fake-h100-05"), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("CUDA_MPS")), "whole GPUs get no MPS limits: {env:?}");
        let nodes: Vec<&str> =
            edits["deviceNodes"].as_array().unwrap().iter().map(|n| n["path"].as_str().unwrap()).collect();
        assert_eq!(nodes, vec!["/dev/nvidia5", "/dev/nvidiactl"]);
        std::fs::remove_dir_all(&dev).unwrap();
    }

    #[test]
    fn a_share_gets_its_mps_limits_and_a_missing_gpu_is_refused() {
        let s = spec("u", &[grant(1, 25)], &gpus(), Path::new("/nonexistent"), &BTreeMap::new()).unwrap();
        let edits = &s["devices"][0]["containerEdits"];
        let env: Vec<&str> = edits["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"), "{env:?}");
        assert!(env.contains(&"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M"), "{env:?}");
        assert!(edits.get("deviceNodes").is_none());
        assert!(matches!(
            spec("u", &[grant(9, 100)], &gpus(), Path::new("/"), &BTreeMap::new()),
            Err(CdiError::Missing(9))
        ));
    }

    #[test]
    fn writes_and_removes_atomically() {
        let dir = std::env::temp_dir().join(format!("haiyun-dra-cdi-{}", std::process::id()));
        let s = spec("u2", &[grant(0, 100)], &gpus(), Path::new("/nonexistent"), &BTreeMap::new()).unwrap();
        write(&dir, "u2", &s).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(path(&dir, "u2")).unwrap()).unwrap();
        assert_eq!(back, s);
        remove(&dir, "u2").unwrap();
        remove(&dir, "u2").unwrap();
        assert!(!path(&dir, "u2").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
