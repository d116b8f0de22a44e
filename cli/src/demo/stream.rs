//! The demo's stream of jobs: single-pod shapes (CPU, memory, whole and shared GPUs) drawn from the shipped Alibaba
//! GPU trace, plus multi-node training gangs, public-data fine-tuning on sensitive datasets, edge inference and HPC
//! batch runs, for five teams. Seeded: the same seed gives the same stream.

use haiyun_api::ComputeJob;
use haiyun_scheduler::rng::SplitMix64;
use serde_json::{Value, json};

/// The trace's default pod list (Alibaba cluster-trace-gpu-v2023, `openb_pod_list_default.csv`; see data/README.md).
const TRACE: &str = include_str!("../../../data/alibaba-gpu-v2023/openb_pod_list_default.csv");

/// One pod shape of the trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Milli-CPU.
    pub cpu_milli: u64,
    /// MiB.
    pub memory_mib: u64,
    /// Whole GPUs (1 with a share below 1000).
    pub gpus: u32,
    /// Thousandths of one GPU, when shared.
    pub gpu_milli: u32,
}

/// Every pod shape of the trace, in order (malformed lines are skipped).
pub fn shapes() -> Vec<Shape> {
    TRACE
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.trim().parse::<u64>().ok());
            Some(Shape {
                cpu_milli: n(1)?,
                memory_mib: n(2)?,
                gpus: u32::try_from(n(3)?).ok()?,
                gpu_milli: u32::try_from(n(4)?).ok()?,
            })
        })
        .collect()
}

/// A job to submit: the object, and the work it really needs (seconds at throughput 1).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The job.
    pub job: ComputeJob,
    /// Its real work; estimates are honest to within -30 %..+10 %.
    pub work: f64,
}

/// The stream.
#[derive(Debug)]
pub struct Stream {
    rng: SplitMix64,
    gpu_shapes: Vec<Shape>,
    cpu_shapes: Vec<Shape>,
    serial: u64,
}

impl Stream {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        let (gpu, cpu): (Vec<Shape>, Vec<Shape>) = shapes().into_iter().partition(|s| s.gpus > 0);
        Stream { rng: SplitMix64::new(seed), gpu_shapes: gpu, cpu_shapes: cpu, serial: 0 }
    }

    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform seconds between `lo` and `hi`, rounded to whole minutes.
    fn runtime(&mut self, lo: f64, hi: f64) -> f64 {
        ((lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp() / 60.0).round().max(1.0) * 60.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.below(from.len() as u64) as usize]
    }

    /// Seconds until the next arrival, at `per_hour` jobs an hour on average.
    pub fn gap(&mut self, per_hour: f64) -> f64 {
        -(1.0 - self.unit()).ln() * 3600.0 / per_hour.max(0.01)
    }

    /// The next job.
    pub fn next_job(&mut self) -> Result<Arrival, serde_json::Error> {
        self.serial += 1;
        let roll = self.rng.below(100);
        let (ns, name, spec, runtime) = match roll {
            0..45 => self.trace_gpu(),
            45..58 => self.trace_cpu(),
            58..70 => self.training(),
            70..82 => self.public_data(),
            82..96 => self.edge(),
            _ => self.hpc_batch(),
        };
        let mut spec = spec;
        spec["runtimeEstimate"] = json!(format!("{}m", (runtime / 60.0).round() as u64));
        let work = runtime * (0.7 + 0.4 * self.unit());
        let job = json!({
            "apiVersion": "haiyun.io/v1alpha1",
            "kind": "ComputeJob",
            "metadata": {"name": format!("{name}-{:04}", self.serial), "namespace": ns},
            "spec": spec,
        });
        Ok(Arrival { job: serde_json::from_value(job)?, work: work.min(runtime * 1.1) })
    }

    fn trace_gpu(&mut self) -> (&'static str, &'static str, Value, f64) {
        let s = self.pick(&self.gpu_shapes.clone());
        let runtime = self.runtime(600.0, 5.0 * 3600.0);
        let cpu = format!("{}m", s.cpu_milli.max(500));
        let memory = format!("{}Mi", s.memory_mib.max(1024));
        if s.gpu_milli < 1000 {
            let group = json!({"name": "server", "replicas": 1, "cpu": cpu, "memory": memory, "gpus": 1,
                "gpuFraction": f64::from(s.gpu_milli.max(50)) / 1000.0,
                "gpuModels": [{"model": "a100", "throughput": 1.0}]});
            let spec = json!({"queue": "analytics", "kind": "inference", "taskGroups": [group]});
            return ("analytics", "serve", spec, runtime);
        }
        let llm = self.rng.below(5) < 2;
        let models = json!([{"model": "h100", "throughput": 2.0}, {"model": "a100", "throughput": 1.0}]);
        let group = json!({"name": "worker", "replicas": 1, "cpu": cpu, "memory": memory,
            "gpus": s.gpus.min(8), "gpuModels": models});
        let (queue, name, data) =
            if llm { ("llm", "sft", "common-crawl-zh") } else { ("vision", "detect", "city-traffic-video") };
        let datasets = if self.rng.below(3) == 0 { json!([data]) } else { json!([]) };
        let spec = json!({"queue": queue, "kind": "training", "taskGroups": [group], "datasets": datasets,
            "checkpointSeconds": 1200});
        (queue, name, spec, runtime)
    }

    fn trace_cpu(&mut self) -> (&'static str, &'static str, Value, f64) {
        let s = self.pick(&self.cpu_shapes.clone());
        let runtime = self.runtime(300.0, 2.0 * 3600.0);
        let group = json!({"name": "etl", "replicas": 1 + self.rng.below(4), "cpu": format!("{}m", s.cpu_milli.max(1000)),
            "memory": format!("{}Mi", s.memory_mib.max(2048))});
        let spec = json!({"queue": "analytics", "kind": "analytics", "taskGroups": [group],
            "poolKinds": ["general", "hpc"]});
        ("analytics", "etl", spec, runtime)
    }

    fn training(&mut self) -> (&'static str, &'static str, Value, f64) {
        let nodes = 2 + self.rng.below(3);
        let runtime = self.runtime(2.0 * 3600.0, 8.0 * 3600.0);
        let urgent = self.rng.below(8) == 0;
        let group = json!({"name": "trainer", "replicas": nodes, "cpu": "96", "memory": "1Ti", "gpus": 8,
            "gpuModels": [{"model": "h100", "throughput": 2.0}, {"model": "a100", "throughput": 1.0}]});
        let spec = json!({"queue": "llm", "kind": "training", "taskGroups": [group], "topology": "rack",
            "datasets": ["common-crawl-zh"], "checkpointSeconds": 1800, "priority": if urgent { 100 } else { 0 }});
        ("llm", if urgent { "pretrain-urgent" } else { "pretrain" }, spec, runtime)
    }

    fn public_data(&mut self) -> (&'static str, &'static str, Value, f64) {
        let data = self.pick(&["census-2025-microdata", "medical-imaging-open"]);
        let gpus = self.pick(&[4u32, 8, 8]);
        let replicas = 1 + self.rng.below(2);
        let runtime = self.runtime(3600.0, 4.0 * 3600.0);
        let group = json!({"name": "tuner", "replicas": replicas, "cpu": "48", "memory": "512Gi", "gpus": gpus,
            "gpuModels": [{"model": "h100", "throughput": 2.0}]});
        let spec = json!({"queue": "public-data", "kind": "training", "taskGroups": [group],
            "datasets": [data], "checkpointSeconds": 900});
        ("public-data", if data.starts_with("census") { "census-ft" } else { "imaging-ft" }, spec, runtime)
    }

    fn edge(&mut self) -> (&'static str, &'static str, Value, f64) {
        let runtime = self.runtime(600.0, 3600.0);
        let group = json!({"name": "detector", "replicas": 1, "cpu": "4", "memory": "16Gi", "gpus": 1,
            "gpuModels": [{"model": "t4", "throughput": 1.0}]});
        let spec =
            json!({"queue": "edge", "kind": "inference", "taskGroups": [group], "poolKinds": ["edge"]});
        ("edge", "edge-infer", spec, runtime)
    }

    fn hpc_batch(&mut self) -> (&'static str, &'static str, Value, f64) {
        let runtime = self.runtime(3600.0, 3.0 * 3600.0);
        let group = json!({"name": "rank", "replicas": 2 + self.rng.below(2), "cpu": "64", "memory": "512Gi", "gpus": 8,
            "gpuModels": [{"model": "a100", "throughput": 1.0}]});
        let spec = json!({"queue": "vision", "kind": "hpc-batch", "taskGroups": [group], "topology": "rack",
            "poolKinds": ["hpc"], "preemptible": false});
        ("vision", "climate-sim", spec, runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_gives_gpu_and_cpu_shapes() {
        let s = shapes();
        assert!(s.len() > 8000, "{}", s.len());
        assert!(s.iter().any(|p| p.gpus == 0) && s.iter().any(|p| p.gpu_milli < 1000 && p.gpus == 1));
        assert!(s.iter().any(|p| p.gpus == 8));
    }

    #[test]
    fn the_stream_is_seeded_and_varied() {
        let names = |seed| {
            let mut s = Stream::new(seed);
            (0..200).map(|_| s.next_job().unwrap().job.metadata.name.unwrap_or_default()).collect::<Vec<_>>()
        };
        assert_eq!(names(7), names(7));
        assert_ne!(names(7), names(8));
        let all = names(7).join(" ");
        for kind in ["serve-", "sft-", "etl-", "pretrain", "census-ft-", "edge-infer-", "climate-sim-"] {
            assert!(all.contains(kind), "no {kind} job in {all}");
        }
    }

    #[test]
    fn estimates_are_honest_to_within_bounds() {
        let mut s = Stream::new(1);
        for _ in 0..300 {
            let a = s.next_job().unwrap();
            let est = a.job.spec.runtime_estimate.as_deref().and_then(haiyun_api::quantity::seconds).unwrap()
                as f64;
            assert!(a.work >= 0.69 * est && a.work <= 1.1 * est + 1.0, "{} vs {est}", a.work);
        }
    }
}
