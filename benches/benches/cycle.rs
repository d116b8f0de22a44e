//! Criterion benchmark of full scheduling cycles on a 10 000-node federation.
// Memory is reported by `haiyun-bench cycle --json`. A broken invariant aborts the benchmark with its message:
// there is no caller to hand it to.
#![allow(clippy::expect_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use haiyun_benches::cycle::setup;

fn first_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle");
    group.sample_size(10);
    for (name, jobs, queues, cohorts) in [
        ("kueue-shape/15k-jobs-30-queues-5-cohorts-10k-nodes", 15_000, 30, 5),
        ("100k-jobs-500-queues-20-cohorts-10k-nodes", 100_000, 500, 20),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (mut sched, list) = setup(10_000, jobs, queues, cohorts, 1).expect("valid setup");
                    for j in list {
                        sched.submit(j).expect("known queue");
                    }
                    sched
                },
                |mut sched| sched.cycle(200.0).expect("no broken invariant"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, first_cycle);
criterion_main!(benches);
