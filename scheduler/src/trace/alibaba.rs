//! The Alibaba GPU cluster trace v2023 ("openb"): node and pod CSVs.

use crate::model::{Cluster, GPU_MILLI, Gpu, GpuModels, Health, ModelSet, Node, Pool, PoolKind, TaskSpec};

/// The per-node task limit of the FGD experiments ("fewer than 1001 pods on the node").
const MAX_TASKS: u32 = 1001;

/// Why a trace file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The file has no header line.
    #[error("failed to parse {file}: it is empty (expected a CSV header line)")]
    Empty {
        /// Which file.
        file: &'static str,
    },
    /// A required column is missing.
    #[error("failed to parse {file}: column {column:?} is missing from the header")]
    MissingColumn {
        /// Which file.
        file: &'static str,
        /// The column.
        column: &'static str,
    },
    /// A value that is not what its column holds.
    #[error("failed to parse {file} line {line}: column {column:?} holds {value:?}, expected {expected}")]
    BadValue {
        /// Which file.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// The column.
        column: &'static str,
        /// What was there.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// More GPU models than a federation may name.
    #[error("failed to parse {file} line {line}: more than 64 GPU models")]
    TooManyModels {
        /// Which file.
        file: &'static str,
        /// 1-based line number.
        line: usize,
    },
}

struct Table<'a> {
    file: &'static str,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(file: &'static str, text: &'a str) -> Result<Self, TraceError> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, head) = lines.next().ok_or(TraceError::Empty { file })?;
        let header = head.split(',').map(str::trim).collect();
        let rows = lines.map(|(i, l)| (i + 1, l.split(',').map(str::trim).collect())).collect();
        Ok(Table { file, header, rows })
    }

    fn column(&self, name: &'static str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or(TraceError::MissingColumn { file: self.file, column: name })
    }

    fn number(&self, row: &(usize, Vec<&str>), col: usize, name: &'static str) -> Result<u64, TraceError> {
        let v = row.1.get(col).copied().unwrap_or("");
        v.parse().map_err(|_| TraceError::BadValue {
            file: self.file,
            line: row.0,
            column: name,
            value: v.to_string(),
            expected: "a non-negative integer",
        })
    }
}

/// Parses the node CSV (`sn,cpu_milli,memory_mib,gpu,model`) into a one-pool cluster; each node is its own
/// rack and NVLink domain.
pub fn parse_nodes(text: &str) -> Result<Cluster, TraceError> {
    const FILE: &str = "node list";
    let t = Table::parse(FILE, text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.column("sn")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("gpu")?,
        t.column("model")?,
    );
    let mut cluster = Cluster {
        models: GpuModels::default(),
        pools: vec![Pool {
            name: "openb".into(),
            kind: PoolKind::Ai,
            site: "alibaba".into(),
            clearance: Default::default(),
        }],
        nodes: Vec::with_capacity(t.rows.len()),
        node_sets: Default::default(),
    };
    for (i, row) in t.rows.iter().enumerate() {
        let gpus = t.number(row, gpu, "gpu")?;
        let name = row.1.get(model).copied().unwrap_or("");
        let id = if gpus == 0 {
            0
        } else {
            cluster.models.intern(name).ok_or(TraceError::TooManyModels { file: FILE, line: row.0 })?
        };
        let gpu = Gpu { model: id, memory_mib: 0, nvlink_domain: i as u32, health: Health::Healthy };
        cluster.nodes.push(Node {
            name: row.1.get(sn).copied().unwrap_or("").to_string(),
            pool: 0,
            rack: i as u32,
            cpu_milli: t.number(row, cpu, "cpu_milli")?,
            memory_mib: t.number(row, mem, "memory_mib")?,
            gpus: vec![gpu; gpus as usize],
            max_tasks: MAX_TASKS,
        });
    }
    Ok(cluster)
}

/// One pod of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// Pod name.
    pub name: String,
    /// What it asks for (share clamped to 1000; may be CPU-only).
    pub spec: TaskSpec,
    /// The `gpu_spec` text, as the typical-shape key uses it.
    pub gpu_spec: String,
}

/// Parses a pod CSV; `models` is the cluster's registry (models named only by pods are interned too).
pub fn parse_pods(text: &str, models: &mut GpuModels) -> Result<Vec<TracePod>, TraceError> {
    const FILE: &str = "pod list";
    let t = Table::parse(FILE, text)?;
    let (cpu, mem, num, milli) =
        (t.column("cpu_milli")?, t.column("memory_mib")?, t.column("num_gpu")?, t.column("gpu_milli")?);
    let (name, spec) = (t.column("name").ok(), t.column("gpu_spec").ok());
    let mut pods = Vec::with_capacity(t.rows.len());
    for row in &t.rows {
        let label = spec.and_then(|c| row.1.get(c).copied()).unwrap_or("");
        let mut set = ModelSet::NONE;
        for part in label.split('|').map(str::trim).filter(|p| !p.is_empty()) {
            set.insert(models.intern(part).ok_or(TraceError::TooManyModels { file: FILE, line: row.0 })?);
        }
        let gpus = u32::try_from(t.number(row, num, "num_gpu")?).unwrap_or(u32::MAX);
        let share = t.number(row, milli, "gpu_milli")?.min(u64::from(GPU_MILLI)) as u32;
        pods.push(TracePod {
            name: name.and_then(|c| row.1.get(c).copied()).unwrap_or("").to_string(),
            spec: TaskSpec {
                cpu_milli: t.number(row, cpu, "cpu_milli")?,
                memory_mib: t.number(row, mem, "memory_mib")?,
                gpus,
                gpu_milli: share,
                models: if set == ModelSet::NONE { ModelSet::ANY } else { set },
                nodes: Default::default(),
            },
            gpu_spec: label.to_string(),
        });
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_become_one_pool_with_models_interned() {
        let c =
            parse_nodes("sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\n")
                .unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].gpus.len(), 8);
        assert_eq!(c.models.name(c.nodes[1].gpus[0].model), "G2");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn pods_without_a_gpu_spec_column_allow_any_model_and_shares_are_clamped() {
        let mut m = GpuModels::default();
        let pods =
            parse_pods("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,10,1,1500\n", &mut m).unwrap();
        assert_eq!(pods[0].spec.gpu_milli, 1000);
        assert!(pods[0].spec.models.is_any());
    }

    #[test]
    fn a_gpu_spec_lists_the_allowed_models() {
        let mut m = GpuModels::default();
        let text =
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,1,1,1,500,T4|P100\nq,1,1,1,500,\n";
        let pods = parse_pods(text, &mut m).unwrap();
        assert_eq!(m.describe(pods[0].spec.models), "T4,P100");
        assert!(pods[1].spec.models.is_any());
    }

    #[test]
    fn a_bad_number_names_the_line_and_column() {
        let err = parse_pods("cpu_milli,memory_mib,num_gpu,gpu_milli\n1,x,1,1\n", &mut GpuModels::default());
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("memory_mib"), "{msg}");
    }

    #[test]
    fn a_missing_column_is_named() {
        let err = parse_nodes("sn,cpu_milli\nn0,1\n").unwrap_err();
        assert_eq!(err, TraceError::MissingColumn { file: "node list", column: "memory_mib" });
    }
}
