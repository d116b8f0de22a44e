//! The MPS control daemon of each shared GPU, so the limits a share's CDI spec sets are enforced: started (one per
//! GPU, its pipe directory under the driver's state) when the GPU's first share is prepared, asked to quit after its
//! last. Where `nvidia-cuda-mps-control` is not installed (a machine without the NVIDIA driver, or the fake probe),
//! there is no daemon and the limits are only the environment a CUDA client reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The MPS control program of NVIDIA's driver.
pub const CONTROL: &str = "nvidia-cuda-mps-control";
/// Where a share's container finds its GPU's MPS pipe directory.
pub const CONTAINER_PIPE_DIR: &str = "/run/nvidia-mps";

/// Why a daemon could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    /// Its directories could not be made.
    #[error("failed to create MPS directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The control program failed.
    #[error("{CONTROL} for GPU {uuid} failed: {why}")]
    Control {
        /// The GPU.
        uuid: String,
        /// What it said.
        why: String,
    },
}

/// The daemons of this node's shared GPUs.
#[derive(Debug, Clone)]
pub struct Mps {
    dir: PathBuf,
    control: Option<PathBuf>,
}

/// The control program on `PATH`, if installed.
pub fn find_control() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(CONTROL)).find(|p| p.is_file())
}

impl Mps {
    /// Daemons kept under `dir`, run by `control` (None: no MPS on this node).
    pub fn new(dir: impl Into<PathBuf>, control: Option<PathBuf>) -> Self {
        Mps { dir: dir.into(), control }
    }

    fn gpu_dir(&self, uuid: &str) -> PathBuf {
        self.dir.join(uuid)
    }

    fn run(&self, control: &Path, uuid: &str, args: &[&str], stdin: &[u8]) -> Result<(), MpsError> {
        let d = self.gpu_dir(uuid);
        let mut child = Command::new(control)
            .args(args)
            .env("CUDA_VISIBLE_DEVICES", uuid)
            .env("CUDA_MPS_PIPE_DIRECTORY", d.join("pipe"))
            .env("CUDA_MPS_LOG_DIRECTORY", d.join("log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| MpsError::Control { uuid: uuid.into(), why: e.to_string() })?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| MpsError::Control { uuid: uuid.into(), why: e.to_string() })?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(MpsError::Control { uuid: uuid.into(), why: format!("{} ({why})", out.status) });
        }
        Ok(())
    }

    /// Starts GPU `uuid`'s daemon unless it runs; returns its pipe directory on the host, or None without MPS.
    pub fn start(&self, uuid: &str) -> Result<Option<PathBuf>, MpsError> {
        let Some(control) = &self.control else { return Ok(None) };
        let d = self.gpu_dir(uuid);
        let started = d.join("started");
        if !started.exists() {
            for sub in ["pipe", "log"] {
                let path = d.join(sub);
                std::fs::create_dir_all(&path).map_err(|source| MpsError::Dir { path, source })?;
            }
            self.run(control, uuid, &["-d"], b"")?;
            std::fs::write(&started, b"")
                .map_err(|source| MpsError::Dir { path: started.clone(), source })?;
            eprintln!("haiyun-dra: started the MPS control daemon of {uuid}");
        }
        Ok(Some(d.join("pipe")))
    }

    /// Asks GPU `uuid`'s daemon to quit, if it runs.
    pub fn stop(&self, uuid: &str) -> Result<(), MpsError> {
        let Some(control) = &self.control else { return Ok(()) };
        let started = self.gpu_dir(uuid).join("started");
        if started.exists() {
            self.run(control, uuid, &[], b"quit\n")?;
            let _ = std::fs::remove_file(&started);
            eprintln!("haiyun-dra: stopped the MPS control daemon of {uuid}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for NVIDIA's control program that records how it was called.
    fn fake_control(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(CONTROL);
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"args=$* in=$in gpu=$CUDA_VISIBLE_DEVICES pipe=$CUDA_MPS_PIPE_DIRECTORY\" >> {}\n",
            dir.join("calls").display()
        );
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn one_daemon_per_gpu_started_once_and_stopped_with_quit() {
        let dir = std::env::temp_dir().join(format!("haiyun-dra-mps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mps = Mps::new(dir.join("state"), Some(fake_control(&dir)));
        let pipe = mps.start("GPU-a").unwrap().unwrap();
        assert_eq!(pipe, dir.join("state/GPU-a/pipe"));
        assert!(pipe.is_dir());
        mps.start("GPU-a").unwrap();
        mps.stop("GPU-a").unwrap();
        mps.stop("GPU-a").unwrap();
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 2, "started once, stopped once: {calls}");
        assert!(lines[0].starts_with("args=-d in= gpu=GPU-a pipe="), "{}", lines[0]);
        assert!(lines[1].starts_with("args= in=quit gpu=GPU-a"), "{}", lines[1]);
        // Without the program there is no daemon, and no error.
        assert_eq!(Mps::new(dir.join("none"), None).start("GPU-b").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
