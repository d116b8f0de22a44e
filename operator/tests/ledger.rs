//! The usage ledger on a real database: SQLite in a file, and PostgreSQL when one is given
//! (`HAIYUN_TEST_POSTGRES=postgres://user@host:port/db`, which `scripts/test.sh` starts). The same records, the same
//! report, after a reopen (a restart).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use haiyun_operator::ledger::runs::{Close, Op, Run};
use haiyun_operator::ledger::store::Store;
use haiyun_operator::ledger::usage::{By, Usage};

const T0: f64 = 1_800_000_000.0;

fn run(uid: &str, queue: &str, user: &str, gpus: f64, start: f64, datasets: &[&str]) -> Run {
    Run {
        uid: uid.into(),
        run: 0,
        job: format!("ns/{uid}"),
        namespace: "ns".into(),
        queue: queue.into(),
        submitter: user.into(),
        pool: "a".into(),
        site: "xian".into(),
        nodes: "n1".into(),
        gpu_model: "H100".into(),
        gpus,
        cpu_cores: 10.0,
        memory_gib: 64.0,
        datasets: datasets.iter().map(|d| d.to_string()).collect(),
        cost_per_hour: 2.0 * gpus,
        start,
        energy_start: 0.0,
    }
}

fn close(uid: &str, end: f64, joules: f64) -> Op {
    Op::Close(Close { uid: uid.into(), run: 0, end, outcome: "Succeeded".into(), energy_joules: joules })
}

/// Three runs: `a` (team-a, alice, 4 GPUs, the first hour, 3600 J), `b` (team-a, bob, 2 GPUs, from 30 min, still
/// open), `c` (team-b, alice, 1 GPU, 2 h from 1 h, reads two datasets).
async fn fill(store: &Store) {
    let ops = vec![
        Op::Open(Box::new(run("a", "team-a", "alice", 4.0, T0, &["census"]))),
        Op::Open(Box::new(run("b", "team-a", "bob", 2.0, T0 + 1800.0, &[]))),
        Op::Open(Box::new(run("c", "team-b", "alice", 1.0, T0 + 3600.0, &["census", "roads"]))),
        close("a", T0 + 3600.0, 3600.0),
        close("c", T0 + 3.0 * 3600.0, 7200.0),
    ];
    store.apply(&ops).await.unwrap();
}

async fn check(url: &str) {
    let store = Store::open(url).await.unwrap();
    fill(&store).await;
    // Written twice (a retried batch, a new leader): nothing changes.
    fill(&store).await;
    store.apply(&[close("a", T0 + 9999.0, 1.0)]).await.unwrap();
    // A restart: a new connection sees the same.
    let store = Store::open(url).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 3);
    let open = store.open_runs().await.unwrap();
    assert_eq!(open.keys().map(|k| k.0.as_str()).collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(open.values().next().unwrap(), &run("b", "team-a", "bob", 2.0, T0 + 1800.0, &[]));

    let now = T0 + 4.0 * 3600.0;
    let all = |by| Usage { by, from: None, to: None };
    let rows = store.usage(&all(By::Queue), now).await.unwrap();
    let got: Vec<(&str, i64, f64)> = rows.iter().map(|r| (r.key.as_str(), r.runs, r.gpu_seconds)).collect();
    // team-a: 4 GPUs × 1 h + 2 GPUs × 3.5 h (open, counted to now); team-b: 1 GPU × 2 h.
    assert_eq!(got, vec![("team-a", 2, 4.0 * 3600.0 + 2.0 * 12600.0), ("team-b", 1, 7200.0)]);
    let a = &rows[0];
    assert_eq!((a.cpu_core_seconds, a.energy_joules), (10.0 * (3600.0 + 12600.0), 3600.0));
    assert!((a.cost - (8.0 + 4.0 * 3.5)).abs() < 1e-9, "{}", a.cost);

    // The second hour only: a ended as it began; b runs through it; c starts with it.
    let window = Usage { by: By::User, from: Some(T0 + 3600.0), to: Some(T0 + 7200.0) };
    let rows = store.usage(&window, now).await.unwrap();
    let got: Vec<(&str, i64, f64, f64)> =
        rows.iter().map(|r| (r.key.as_str(), r.runs, r.gpu_seconds, r.energy_joules)).collect();
    // alice: c's first hour (1 GPU, half of its 7200 J); bob: b's hour (2 GPUs).
    assert_eq!(got, vec![("alice", 1, 3600.0, 3600.0), ("bob", 1, 7200.0, 0.0)]);

    // By dataset: a run that read two counts for each; a run that read none is in no row.
    let rows = store.usage(&all(By::Dataset), now).await.unwrap();
    let got: Vec<(&str, i64, f64)> = rows.iter().map(|r| (r.key.as_str(), r.runs, r.gpu_seconds)).collect();
    assert_eq!(got, vec![("census", 2, 4.0 * 3600.0 + 7200.0), ("roads", 1, 7200.0)]);

    // The runs that ended since a time, with their ends: what a new leader weighs past usage by for fair share.
    let ended = store.ended_since(T0 + 2.0 * 3600.0).await.unwrap();
    let got: Vec<(&str, f64)> = ended.iter().map(|(r, end)| (r.uid.as_str(), *end)).collect();
    assert_eq!(got, vec![("c", T0 + 3.0 * 3600.0)]);

    // Totals per queue, pool and model (closed runs only) for the counters.
    let totals = store.totals().await.unwrap();
    let key = ("team-a".to_string(), "a".to_string(), "H100".to_string());
    assert_eq!(totals.by_key[&key], [4.0 * 3600.0, 3600.0, 8.0]);
}

#[tokio::test]
async fn sqlite_keeps_every_run_across_a_reopen_and_reports_them_clipped_to_a_window() {
    let dir = std::env::temp_dir().join(format!("haiyun-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("ledger.db").display());
    check(&url).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgresql_keeps_every_run_across_a_reopen_and_reports_them_clipped_to_a_window() {
    let Ok(base) = std::env::var("HAIYUN_TEST_POSTGRES") else {
        assert!(
            std::env::var("HAIYUN_REQUIRE_POSTGRES").is_err(),
            "HAIYUN_REQUIRE_POSTGRES is set but HAIYUN_TEST_POSTGRES is not"
        );
        eprintln!(
            "skipped: set HAIYUN_TEST_POSTGRES=postgres://user@host:port/db (scripts/test.sh starts one)"
        );
        return;
    };
    // A database of its own, so that runs of this test never meet.
    let name = format!("haiyun_ledger_{}", std::process::id());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    let (root, _) = base.rsplit_once('/').unwrap();
    check(&format!("{root}/{name}")).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
    admin.close().await;
}

#[tokio::test]
async fn a_url_of_another_database_is_refused_with_the_forms_it_takes() {
    let e = Store::open("mysql://x/y").await.unwrap_err().to_string();
    assert!(e.contains("sqlite://") && e.contains("postgres://"), "{e}");
}
