//! The usage ledger's costs on generated runs: what writing a run costs (as the operator writes them, a cycle's batch
//! per transaction, and one run per transaction), and how long reports take over a million runs, against a plain
//! count of the table measured in the same run. Prints JSON figures.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use haiyun_operator::ledger::runs::{Close, Op, Run};
use haiyun_operator::ledger::store::Store;
use haiyun_operator::ledger::usage::{By, Usage};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "haiyun-ledger-bench", about = "The usage ledger: write cost per run, report time")]
struct Args {
    /// The ledger (default: a SQLite file in a temporary directory, removed after).
    #[arg(long)]
    ledger: Option<String>,
    /// Runs generated.
    #[arg(long, default_value_t = 1_000_000)]
    runs: u32,
    /// Runs per transaction while filling (a busy cycle's batch).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Runs written one per transaction (the quietest cycle's cost).
    #[arg(long, default_value_t = 500)]
    single: u32,
}

const T0: f64 = 1_800_000_000.0;

/// Run `i`: 50 queues, 200 users, 8 pools at 4 sites, 3 GPU models, 1 to 8 GPUs, 10 minutes to 10 hours, a dataset
/// for one run in four; starts spread over a year.
fn run(i: u32) -> (Run, Close) {
    // SplitMix64 of (run, field): independent, evenly spread values per field.
    let h = |k: u32| {
        let mut z = (u64::from(i) << 8 | u64::from(k)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u32
    };
    let start = T0 + f64::from(i) * 31.5;
    let gpus = f64::from(1 << (h(1) % 4));
    let r = Run {
        uid: format!("uid-{i}"),
        run: h(2) % 2,
        job: format!("ns-{}/job-{i}", h(3) % 40),
        namespace: format!("ns-{}", h(3) % 40),
        queue: format!("queue-{}", h(4) % 50),
        submitter: format!("user-{}", h(5) % 200),
        pool: format!("pool-{}", h(6) % 8),
        site: format!("site-{}", h(6) % 4),
        nodes: format!("node-{}", h(7) % 1000),
        gpu_model: ["H100", "A100", "L40S"][(h(8) % 3) as usize].into(),
        gpus,
        cpu_cores: gpus * 8.0,
        memory_gib: gpus * 64.0,
        datasets: if h(9) % 4 == 0 { vec![format!("dataset-{}", h(9) % 30)] } else { Vec::new() },
        cost_per_hour: gpus * 2.5,
        start,
        energy_start: 0.0,
    };
    let end = start + 600.0 + f64::from(h(1) % 36_000);
    let c = Close {
        uid: r.uid.clone(),
        run: r.run,
        end,
        outcome: "Succeeded".into(),
        energy_joules: gpus * 400.0,
    };
    (r, c)
}

async fn bench(args: Args, url: String) -> Result<serde_json::Value, String> {
    let store = Store::open(&url).await.map_err(|e| e.to_string())?;
    let err = |e: haiyun_operator::ledger::store::StoreError| e.to_string();
    let started = Instant::now();
    let mut i = 0;
    while i < args.runs {
        let n = (args.batch as u32).min(args.runs - i);
        let ops: Vec<Op> = (i..i + n)
            .flat_map(|k| {
                let (r, c) = run(k);
                [Op::Open(Box::new(r)), Op::Close(c)]
            })
            .collect();
        store.apply(&ops).await.map_err(err)?;
        i += n;
    }
    let batched_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for k in args.runs..args.runs + args.single {
        let (r, c) = run(k);
        store.apply(&[Op::Open(Box::new(r))]).await.map_err(err)?;
        store.apply(&[Op::Close(c)]).await.map_err(err)?;
    }
    let single_s = started.elapsed().as_secs_f64();
    let now = T0 + 400.0 * 86400.0;
    let started = Instant::now();
    let total = store.count().await.map_err(err)?;
    let count_s = started.elapsed().as_secs_f64();
    let mut reports = serde_json::Map::new();
    for (name, by) in
        [("queue", By::Queue), ("user", By::User), ("model", By::Model), ("dataset", By::Dataset)]
    {
        let started = Instant::now();
        let rows = store.usage(&Usage { by, from: None, to: None }, now).await.map_err(err)?;
        let all = started.elapsed().as_secs_f64();
        // One month in the middle of the year.
        let month = Usage { by, from: Some(T0 + 180.0 * 86400.0), to: Some(T0 + 210.0 * 86400.0) };
        let started = Instant::now();
        store.usage(&month, now).await.map_err(err)?;
        let window = started.elapsed().as_secs_f64();
        reports.insert(
            name.into(),
            json!({ "rows": rows.len(), "all_time_s": all, "one_month_s": window, "all_time_over_count": all / count_s }),
        );
    }
    Ok(json!({
        "ledger": if url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "runs": total,
        "write_us_per_run_batched": batched_s * 1e6 / f64::from(args.runs),
        "batch": args.batch,
        "write_us_per_run_one_per_transaction": single_s * 1e6 / f64::from(args.single.max(1)) / 2.0,
        "count_s": count_s,
        "reports": reports,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("haiyun-ledger-bench-{}", std::process::id()));
    let url = match &args.ledger {
        Some(u) => u.clone(),
        None => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            format!("sqlite://{}", dir.join("ledger.db").display())
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(bench(args, url));
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
