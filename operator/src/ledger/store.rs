//! Where the ledger lives: a SQLite file (the embedded default) or a PostgreSQL database, through one SQL dialect
//! that both accept (sqlx's `Any` driver, `$n` parameters).

use std::collections::BTreeMap;

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

use super::runs::{Close, Op, Run, RunKey};
use super::usage::{By, Totals, Usage, UsageRow};

/// Why the ledger could not be reached or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither SQLite nor PostgreSQL.
    #[error(
        "--ledger {0}: expected sqlite://<file> (e.g. sqlite:///var/lib/haiyun/ledger.db) or postgres://<user>@<host>/<db>"
    )]
    Url(String),
    /// The database refused or could not be reached.
    #[error("ledger database: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The tables: one row per run, one per dataset a run read. Both dialects take these types.
const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS runs (
        uid TEXT NOT NULL, run BIGINT NOT NULL, job TEXT NOT NULL, namespace TEXT NOT NULL, queue TEXT NOT NULL,
        submitter TEXT NOT NULL, pool TEXT NOT NULL, site TEXT NOT NULL, nodes TEXT NOT NULL,
        gpu_model TEXT NOT NULL, gpus DOUBLE PRECISION NOT NULL, cpu_cores DOUBLE PRECISION NOT NULL,
        memory_gib DOUBLE PRECISION NOT NULL, datasets TEXT NOT NULL, cost_per_hour DOUBLE PRECISION NOT NULL,
        start_s DOUBLE PRECISION NOT NULL, end_s DOUBLE PRECISION, outcome TEXT NOT NULL,
        energy_start DOUBLE PRECISION NOT NULL, energy_joules DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (uid, run))",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (start_s)",
    "CREATE INDEX IF NOT EXISTS runs_by_end ON runs (end_s)",
    "CREATE TABLE IF NOT EXISTS run_datasets (
        uid TEXT NOT NULL, run BIGINT NOT NULL, dataset TEXT NOT NULL, PRIMARY KEY (uid, run, dataset))",
];

const RUN_COLUMNS: &str = "uid, run, job, namespace, queue, submitter, pool, site, nodes, gpu_model, gpus, \
    cpu_cores, memory_gib, datasets, cost_per_hour, start_s, energy_start";

/// A connection pool to the ledger.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects to `url` (`sqlite://…` makes the file if missing; `postgres://…`) and makes the tables.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, connections) = if let Some(path) = url.strip_prefix("sqlite://") {
            // One connection: SQLite takes one writer at a time, and reports are rare.
            let sep = if path.contains('?') { '&' } else { '?' };
            (format!("sqlite://{path}{sep}mode=rwc"), 1)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), 4)
        } else {
            return Err(StoreError::Url(url.into()));
        };
        let pool = AnyPoolOptions::new().max_connections(connections).connect(&url).await?;
        if url.starts_with("sqlite://") {
            // Writes survive a crash of the process (WAL), and readers do not block the writer.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(Store { pool })
    }

    /// Records `ops` in order, all or none.
    pub async fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for op in ops {
            match op {
                Op::Open(r) => open(&mut tx, r).await?,
                Op::Close(c) => close(&mut tx, c).await?,
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The runs not closed yet.
    pub async fn open_runs(&self) -> Result<BTreeMap<RunKey, Run>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE end_s IS NULL");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let r = run_of(&row)?;
            out.insert((r.uid.clone(), r.run), r);
        }
        Ok(out)
    }

    /// The runs that ended at or after `since`, with their ends, oldest end first.
    pub async fn ended_since(&self, since: f64) -> Result<Vec<(Run, f64)>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}, end_s FROM runs WHERE end_s IS NOT NULL AND end_s >= $1 ORDER BY end_s"
        );
        let rows = sqlx::query(&sql).bind(since).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((run_of(row)?, row.try_get::<f64, _>("end_s")?))).collect()
    }

    /// Usage per `query.by` inside its window, runs still open counted up to `now`.
    pub async fn usage(&self, query: &Usage, now: f64) -> Result<Vec<UsageRow>, StoreError> {
        let to = query.to.unwrap_or(now).min(now);
        let from = query.from.unwrap_or(0.0);
        let rows = sqlx::query(&query.by.sql()).bind(from).bind(to).fetch_all(&self.pool).await?;
        rows.iter().map(usage_of).collect()
    }

    /// What the closed runs used, per queue, pool and GPU model.
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let sql = "SELECT queue, pool, gpu_model, CAST(SUM(gpus * (end_s - start_s)) AS DOUBLE PRECISION), \
            CAST(SUM(energy_joules) AS DOUBLE PRECISION), \
            CAST(SUM(cost_per_hour * (end_s - start_s) / 3600.0) AS DOUBLE PRECISION) \
            FROM runs WHERE end_s IS NOT NULL GROUP BY queue, pool, gpu_model";
        let mut out = Totals::default();
        for row in sqlx::query(sql).fetch_all(&self.pool).await? {
            let key = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            out.add(key, row.try_get(3)?, row.try_get(4)?, row.try_get(5)?);
        }
        Ok(out)
    }

    /// How many runs it holds (open and closed).
    pub async fn count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM runs").fetch_one(&self.pool).await?.try_get(0)?)
    }
}

async fn open(tx: &mut sqlx::Transaction<'static, sqlx::Any>, r: &Run) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO runs ({RUN_COLUMNS}, outcome, energy_joules) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'Running', 0) \
         ON CONFLICT (uid, run) DO NOTHING"
    );
    sqlx::query(&sql)
        .bind(&r.uid)
        .bind(i64::from(r.run))
        .bind(&r.job)
        .bind(&r.namespace)
        .bind(&r.queue)
        .bind(&r.submitter)
        .bind(&r.pool)
        .bind(&r.site)
        .bind(&r.nodes)
        .bind(&r.gpu_model)
        .bind(r.gpus)
        .bind(r.cpu_cores)
        .bind(r.memory_gib)
        .bind(r.datasets.join(","))
        .bind(r.cost_per_hour)
        .bind(r.start)
        .bind(r.energy_start)
        .execute(&mut **tx)
        .await?;
    for d in &r.datasets {
        sqlx::query(
            "INSERT INTO run_datasets (uid, run, dataset) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&r.uid)
        .bind(i64::from(r.run))
        .bind(d)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn close(tx: &mut sqlx::Transaction<'static, sqlx::Any>, c: &Close) -> Result<(), StoreError> {
    // Only an open run closes: closing twice (a failover, a retried write) changes nothing.
    sqlx::query(
        "UPDATE runs SET end_s = $1, outcome = $2, energy_joules = $3 WHERE uid = $4 AND run = $5 AND end_s IS NULL",
    )
    .bind(c.end)
    .bind(&c.outcome)
    .bind(c.energy_joules)
    .bind(&c.uid)
    .bind(i64::from(c.run))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn run_of(row: &AnyRow) -> Result<Run, StoreError> {
    let datasets: String = row.try_get("datasets")?;
    let run: i64 = row.try_get("run")?;
    Ok(Run {
        uid: row.try_get("uid")?,
        run: u32::try_from(run).unwrap_or_default(),
        job: row.try_get("job")?,
        namespace: row.try_get("namespace")?,
        queue: row.try_get("queue")?,
        submitter: row.try_get("submitter")?,
        pool: row.try_get("pool")?,
        site: row.try_get("site")?,
        nodes: row.try_get("nodes")?,
        gpu_model: row.try_get("gpu_model")?,
        gpus: row.try_get("gpus")?,
        cpu_cores: row.try_get("cpu_cores")?,
        memory_gib: row.try_get("memory_gib")?,
        datasets: datasets.split(',').filter(|d| !d.is_empty()).map(String::from).collect(),
        cost_per_hour: row.try_get("cost_per_hour")?,
        start: row.try_get("start_s")?,
        energy_start: row.try_get("energy_start")?,
    })
}

fn usage_of(row: &AnyRow) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        key: row.try_get(0)?,
        runs: row.try_get(1)?,
        gpu_seconds: row.try_get(2)?,
        cpu_core_seconds: row.try_get(3)?,
        memory_gib_seconds: row.try_get(4)?,
        energy_joules: row.try_get(5)?,
        cost: row.try_get(6)?,
    })
}

impl By {
    /// The report's query: `$1` the window's start, `$2` its end; each run clipped to the window.
    fn sql(self) -> String {
        let (key, join) = match self {
            By::Queue => ("r.queue", ""),
            By::Namespace => ("r.namespace", ""),
            By::User => ("r.submitter", ""),
            By::Pool => ("r.pool", ""),
            By::Site => ("r.site", ""),
            By::Model => ("r.gpu_model", ""),
            By::Dataset => ("d.dataset", " JOIN run_datasets d ON d.uid = r.uid AND d.run = r.run"),
        };
        let f = |x: &str| format!("CAST(COALESCE(SUM({x}), 0) AS DOUBLE PRECISION)");
        format!(
            "SELECT k, COUNT(*), {}, {}, {}, {}, {} FROM (\
               SELECT {key} AS k, r.gpus, r.cpu_cores, r.memory_gib, r.cost_per_hour, r.energy_joules, \
                 r.start_s, r.end_s, \
                 (CASE WHEN r.end_s IS NULL OR r.end_s > $2 THEN $2 ELSE r.end_s END) \
                 - (CASE WHEN r.start_s < $1 THEN $1 ELSE r.start_s END) AS w \
               FROM runs r{join} WHERE r.start_s < $2 AND (r.end_s IS NULL OR r.end_s > $1)\
             ) AS clipped GROUP BY k ORDER BY k",
            f("gpus * w"),
            f("cpu_cores * w"),
            f("memory_gib * w"),
            f(
                "CASE WHEN end_s IS NOT NULL AND end_s > start_s THEN energy_joules * w / (end_s - start_s) ELSE 0 END"
            ),
            f("cost_per_hour * w / 3600.0"),
        )
    }
}
