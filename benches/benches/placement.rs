//! Criterion benchmarks of the core at scale: placing pending work on a 10 000-node, 80 000-GPU federation.
// A broken invariant aborts the benchmark with its message: there is no caller to hand it to.
#![allow(clippy::expect_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use haiyun_benches::scale::setup;
use haiyun_scheduler::placer::{Placer, PlacerConfig};
use haiyun_scheduler::plugin::{Policy, PolicyName};
use haiyun_scheduler::snapshot::Snapshot;

fn place_pending(c: &mut Criterion) {
    let (cluster, gangs, typical) = setup(10_000, 100_000, 1);
    let mut group = c.benchmark_group("place");
    group.sample_size(10);
    for name in [PolicyName::Haiyun, PolicyName::Bestfit] {
        // One iteration places the first 10 000 tasks' gangs on a fresh snapshot.
        let prefix: Vec<_> = gangs
            .iter()
            .scan(0usize, |n, g| {
                *n += g.tasks.len();
                (*n <= 10_000).then(|| g.clone())
            })
            .collect();
        group.bench_function(format!("{name}/10k-tasks-on-10k-nodes"), |b| {
            b.iter_batched(
                || {
                    let snap = Snapshot::new(cluster.clone()).expect("valid federation");
                    let placer = Placer::new(
                        Policy::new(name, 1, Some(&typical)).expect("policy"),
                        PlacerConfig::default(),
                    );
                    (snap, placer)
                },
                |(mut snap, mut placer)| {
                    for g in &prefix {
                        let _ = placer.place(&mut snap, g).expect("no broken invariant");
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn snapshot_build(c: &mut Criterion) {
    let (cluster, _, _) = setup(10_000, 1, 1);
    c.bench_function("snapshot/build-10k-nodes", |b| {
        b.iter(|| Snapshot::new(cluster.clone()).expect("valid"))
    });
}

criterion_group!(benches, place_pending, snapshot_build);
criterion_main!(benches);
