//! Gavel's heterogeneous-GPU job lists and throughput tables (Narayanan et al., OSDI 2020).

use std::collections::HashMap;

use super::alibaba::TraceError;

/// One job of a Gavel job list.
#[derive(Debug, Clone, PartialEq)]
pub struct GavelJob {
    /// Job id from the list.
    pub id: String,
    /// Arrival, seconds.
    pub arrival_s: f64,
    /// Job type (the throughput table's key).
    pub job_type: String,
    /// GPUs it needs (all of one type).
    pub gpus: u32,
    /// Steps to run.
    pub total_steps: f64,
}

/// Whole-job throughput (steps/s) by (job type, GPUs) and GPU type; absent or 0: cannot run there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Throughputs {
    table: HashMap<(String, u32), HashMap<String, f64>>,
}

impl Throughputs {
    /// Steps/s of `job_type` on `gpus` GPUs of `gpu_type` (0 when unknown).
    pub fn get(&self, job_type: &str, gpus: u32, gpu_type: &str) -> f64 {
        self.table.get(&(job_type.to_string(), gpus)).and_then(|m| m.get(gpu_type)).copied().unwrap_or(0.0)
    }
}

fn split(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

fn number(file: &'static str, line: usize, column: &'static str, v: &str) -> Result<f64, TraceError> {
    let bad = || TraceError::BadValue {
        file,
        line,
        column,
        value: v.to_string(),
        expected: "a finite number >= 0",
    };
    let x: f64 = v.parse().map_err(|_| bad())?;
    if x.is_finite() && x >= 0.0 { Ok(x) } else { Err(bad()) }
}

fn count(file: &'static str, line: usize, column: &'static str, v: &str) -> Result<u32, TraceError> {
    v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| TraceError::BadValue {
        file,
        line,
        column,
        value: v.to_string(),
        expected: "a whole number >= 1",
    })
}

/// Parses `job_type,scale_factor,<type>_steps_per_s,…`.
pub fn parse_throughputs(text: &str) -> Result<Throughputs, TraceError> {
    const FILE: &str = "throughputs";
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or(TraceError::Empty { file: FILE })?;
    let header = split(head);
    let col = |name: &'static str| {
        header.iter().position(|h| *h == name).ok_or(TraceError::MissingColumn { file: FILE, column: name })
    };
    let (jt, sf) = (col("job_type")?, col("scale_factor")?);
    let types: Vec<(usize, String)> = header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_suffix("_steps_per_s").map(|t| (i, t.to_string())))
        .collect();
    let mut out = Throughputs::default();
    for (i, l) in lines {
        let r = split(l);
        let k = count(FILE, i + 1, "scale_factor", r.get(sf).copied().unwrap_or(""))?;
        let entry = out.table.entry((r.get(jt).copied().unwrap_or("").to_string(), k)).or_default();
        for (c, t) in &types {
            let v = r.get(*c).copied().unwrap_or("");
            entry.insert(t.clone(), if v.is_empty() { 0.0 } else { number(FILE, i + 1, "steps_per_s", v)? });
        }
    }
    Ok(out)
}

/// Parses a job list (`job_id,arrival_time_s,job_type,…,num_gpus,total_steps,…`).
pub fn parse_jobs(text: &str) -> Result<Vec<GavelJob>, TraceError> {
    const FILE: &str = "job list";
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or(TraceError::Empty { file: FILE })?;
    let header = split(head);
    let col = |name: &'static str| {
        header.iter().position(|h| *h == name).ok_or(TraceError::MissingColumn { file: FILE, column: name })
    };
    let (id, at, jt, ng, ts) =
        (col("job_id")?, col("arrival_time_s")?, col("job_type")?, col("num_gpus")?, col("total_steps")?);
    let mut jobs = Vec::new();
    for (i, l) in lines {
        let r = split(l);
        let get = |c: usize| r.get(c).copied().unwrap_or("");
        jobs.push(GavelJob {
            id: get(id).to_string(),
            arrival_s: number(FILE, i + 1, "arrival_time_s", get(at))?,
            job_type: get(jt).to_string(),
            gpus: count(FILE, i + 1, "num_gpus", get(ng))?,
            total_steps: number(FILE, i + 1, "total_steps", get(ts))?,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughputs_are_keyed_by_job_type_scale_and_gpu_type() {
        let t = parse_throughputs(
            "job_type,scale_factor,v100_steps_per_s,k80_steps_per_s\nA3C,1,7.5,\nA3C,2,14,3\n",
        )
        .unwrap();
        assert_eq!(t.get("A3C", 1, "v100"), 7.5);
        assert_eq!(t.get("A3C", 1, "k80"), 0.0);
        assert_eq!(t.get("A3C", 2, "k80"), 3.0);
        assert_eq!(t.get("LM", 1, "v100"), 0.0);
    }

    #[test]
    fn arrivals_must_be_finite_and_gpu_counts_whole() {
        let head = "job_id,arrival_time_s,job_type,num_gpus,total_steps\n";
        assert!(parse_jobs(&format!("{head}0,NaN,A3C,1,10\n")).is_err());
        assert!(parse_jobs(&format!("{head}0,-5,A3C,1,10\n")).is_err());
        assert!(parse_jobs(&format!("{head}0,1,A3C,1.5,10\n")).is_err());
        assert!(parse_jobs(&format!("{head}0,1,A3C,0,10\n")).is_err());
        assert_eq!(parse_jobs(&format!("{head}0,1,A3C,2,10\n")).unwrap()[0].gpus, 2);
    }

    #[test]
    fn a_job_list_needs_its_columns() {
        let err = parse_jobs("job_id,arrival_time_s\n0,0\n").unwrap_err();
        assert!(matches!(err, TraceError::MissingColumn { column: "job_type", .. }));
    }
}
