//! Quota accounting: nominal, borrowing, lending limits, grants and fair share.

use super::*;

const GPU: Flavor = Flavor::Gpu(0);

fn gpus(n: u64) -> Resources {
    Resources::default().with(GPU, n * 1000)
}

fn cohort_queue(name: &str, nominal: u64) -> QueueSpec {
    let mut q = QueueSpec::new(name, gpus(nominal));
    q.cohort = Some("research".into());
    q
}

#[test]
fn a_queue_without_a_cohort_admits_up_to_its_nominal_quota() {
    let mut book = Quotas::default();
    let a = book.add(QueueSpec::new("a", gpus(8))).unwrap();
    assert!(book.fits(a, &gpus(8), 0.0).is_ok());
    book.charge(a, &gpus(6)).unwrap();
    let short = book.fits(a, &gpus(8), 0.0).unwrap_err();
    assert_eq!((short.needed, short.left, short.cohort_can_lend), (8000, 2000, 0));
}

#[test]
fn a_queue_borrows_what_its_cohort_does_not_use() {
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let b = book.add(cohort_queue("b", 8)).unwrap();
    assert!(book.fits(a, &gpus(16), 0.0).is_ok());
    book.charge(b, &gpus(4)).unwrap();
    let short = book.fits(a, &gpus(16), 0.0).unwrap_err();
    assert_eq!((short.left, short.cohort_can_lend), (8000, 4000));
    assert!(book.fits(a, &gpus(12), 0.0).is_ok());
}

#[test]
fn lending_and_borrowing_limits_hold() {
    let mut book = Quotas::default();
    let mut a = cohort_queue("a", 8);
    a.borrowing_limit = Some(gpus(2));
    let mut b = cohort_queue("b", 8);
    b.lending_limit = Some(gpus(3));
    let (a, _b) = (book.add(a).unwrap(), book.add(b).unwrap());
    assert!(book.fits(a, &gpus(10), 0.0).is_ok());
    assert!(book.fits(a, &gpus(11), 0.0).is_err(), "borrowing limit is 2");
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let mut b = cohort_queue("b", 8);
    b.lending_limit = Some(gpus(3));
    book.add(b).unwrap();
    assert!(book.fits(a, &gpus(11), 0.0).is_ok());
    assert!(book.fits(a, &gpus(12), 0.0).is_err(), "b lends at most 3");
}

#[test]
fn a_grant_raises_nominal_only_inside_its_window() {
    let mut book = Quotas::default();
    let a = book.add(QueueSpec::new("a", gpus(2))).unwrap();
    book.grant(Grant { queue: a, flavor: GPU, amount: 6000, start: 100.0, end: 200.0 });
    assert!(book.fits(a, &gpus(8), 50.0).is_err());
    assert!(book.fits(a, &gpus(8), 150.0).is_ok());
    assert!(book.fits(a, &gpus(8), 200.0).is_err());
    book.expire(250.0);
    assert_eq!(book.nominal(a, GPU, 150.0), 2000);
}

#[test]
fn dominant_share_is_the_largest_usage_over_nominal_divided_by_weight() {
    let mut book = Quotas::default();
    let mut spec = QueueSpec::new("a", gpus(8).with(Flavor::Cpu, 100_000));
    spec.weight = 2.0;
    let a = book.add(spec).unwrap();
    book.charge(a, &gpus(4).with(Flavor::Cpu, 10_000)).unwrap();
    assert!((book.dominant_share(a, 0.0) - 0.25).abs() < 1e-12);
}

#[test]
fn bad_queues_are_refused_with_their_name() {
    let mut book = Quotas::default();
    let mut spec = QueueSpec::new("zero", gpus(1));
    spec.weight = 0.0;
    assert_eq!(book.add(spec).unwrap_err(), QuotaError::BadWeight("zero".into()));
    book.add(QueueSpec::new("a", gpus(1))).unwrap();
    assert_eq!(book.add(QueueSpec::new("a", gpus(1))).unwrap_err(), QuotaError::Duplicate("a".into()));
}

#[test]
fn unlent_counts_what_the_rest_of_the_cohort_does_not_use() {
    let gpu = Flavor::Gpu(0);
    let mut q = Quotas::default();
    let mut a = QueueSpec::new("a", Resources::default().with(gpu, 8000));
    a.cohort = Some("c".into());
    let mut b = QueueSpec::new("b", Resources::default().with(gpu, 16_000));
    b.cohort = Some("c".into());
    b.lending_limit = Some(Resources::default().with(gpu, 12_000));
    let (a, b) = (q.add(a).unwrap(), q.add(b).unwrap());
    assert_eq!(q.unlent(a, gpu, 0.0), 12_000);
    q.charge(b, &Resources::default().with(gpu, 10_000)).unwrap();
    assert_eq!(q.unlent(a, gpu, 0.0), 6000, "b keeps 4 GPUs for itself; 6 of its 12 lendable are in use");
    let solo = q.add(QueueSpec::new("solo", Resources::default().with(gpu, 8000))).unwrap();
    assert_eq!(q.unlent(solo, gpu, 0.0), 0);
}
