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
    assert!(book.fits(a, None, &gpus(8), 0.0).is_ok());
    book.charge(a, None, &gpus(6)).unwrap();
    let short = book.fits(a, None, &gpus(8), 0.0).unwrap_err();
    assert_eq!((short.needed, short.left, short.cohort_can_lend), (8000, 2000, 0));
}

#[test]
fn a_queue_borrows_what_its_cohort_does_not_use() {
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let b = book.add(cohort_queue("b", 8)).unwrap();
    assert!(book.fits(a, None, &gpus(16), 0.0).is_ok());
    book.charge(b, None, &gpus(4)).unwrap();
    let short = book.fits(a, None, &gpus(16), 0.0).unwrap_err();
    assert_eq!((short.left, short.cohort_can_lend), (8000, 4000));
    assert!(book.fits(a, None, &gpus(12), 0.0).is_ok());
}

#[test]
fn lending_and_borrowing_limits_hold() {
    let mut book = Quotas::default();
    let mut a = cohort_queue("a", 8);
    a.borrowing_limit = Some(gpus(2));
    let mut b = cohort_queue("b", 8);
    b.lending_limit = Some(gpus(3));
    let (a, _b) = (book.add(a).unwrap(), book.add(b).unwrap());
    assert!(book.fits(a, None, &gpus(10), 0.0).is_ok());
    assert!(book.fits(a, None, &gpus(11), 0.0).is_err(), "borrowing limit is 2");
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let mut b = cohort_queue("b", 8);
    b.lending_limit = Some(gpus(3));
    book.add(b).unwrap();
    assert!(book.fits(a, None, &gpus(11), 0.0).is_ok());
    assert!(book.fits(a, None, &gpus(12), 0.0).is_err(), "b lends at most 3");
}

#[test]
fn a_grant_raises_nominal_only_inside_its_window() {
    let mut book = Quotas::default();
    let a = book.add(QueueSpec::new("a", gpus(2))).unwrap();
    book.grant(Grant { queue: a, flavor: GPU, amount: 6000, start: 100.0, end: 200.0 });
    assert!(book.fits(a, None, &gpus(8), 50.0).is_err());
    assert!(book.fits(a, None, &gpus(8), 150.0).is_ok());
    assert!(book.fits(a, None, &gpus(8), 200.0).is_err());
    book.expire(250.0);
    assert_eq!(book.nominal(a, GPU, 150.0), 2000);
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
    q.charge(b, None, &Resources::default().with(gpu, 10_000)).unwrap();
    assert_eq!(q.unlent(a, gpu, 0.0), 6000, "b keeps 4 GPUs for itself; 6 of its 12 lendable are in use");
    let solo = q.add(QueueSpec::new("solo", Resources::default().with(gpu, 8000))).unwrap();
    assert_eq!(q.unlent(solo, gpu, 0.0), 0);
}

#[test]
fn nested_cohorts_lend_across_the_whole_tree() {
    let mut book = Quotas::default();
    let mut vision = QueueSpec::new("vision", gpus(8));
    vision.cohort = Some("research/vision".into());
    let mut nlp = QueueSpec::new("nlp", gpus(8));
    nlp.cohort = Some("research/nlp".into());
    let mut other = QueueSpec::new("other", gpus(8));
    other.cohort = Some("other".into());
    let (v, n, o) = (book.add(vision).unwrap(), book.add(nlp).unwrap(), book.add(other).unwrap());
    assert!(book.fits(v, None, &gpus(16), 0.0).is_ok(), "vision borrows nlp's idle quota across the tree");
    assert!(book.fits(v, None, &gpus(17), 0.0).is_err(), "and nothing from another tree");
    assert!(book.same_tree(v, n) && !book.same_tree(v, o));
    assert_eq!((book.kinship(v, n), book.kinship(v, v), book.kinship(v, o)), (1, 2, 0));
}

#[test]
fn a_user_limit_caps_one_user_and_not_the_others() {
    let mut book = Quotas::default();
    let mut spec = QueueSpec::new("team", gpus(16));
    spec.user_limit = Some(gpus(4));
    let q = book.add(spec).unwrap();
    book.charge(q, Some(1), &gpus(4)).unwrap();
    let short = book.fits(q, Some(1), &gpus(1), 0.0).unwrap_err();
    assert_eq!((short.user, short.left, short.needed), (Some(1), 0, 1000));
    assert!(book.fits(q, Some(2), &gpus(4), 0.0).is_ok(), "another user has a limit of its own");
    assert!(book.fits(q, None, &gpus(8), 0.0).is_ok(), "a job of nobody in particular has no user limit");
    book.release(q, Some(1), &gpus(2)).unwrap();
    assert!(book.fits(q, Some(1), &gpus(2), 0.0).is_ok());
    assert_eq!(book.user_usage(q, 1), gpus(2));
}

#[test]
fn past_usage_orders_queues_of_equal_weight_until_it_fades() {
    let mut book = Quotas::default();
    book.set_half_life(Some(3600.0));
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let b = book.add(cohort_queue("b", 8)).unwrap();
    book.record_run(a, &gpus(8), 0.0, 3600.0);
    assert_eq!(book.fair_ranks(3600.0, std::iter::empty()), vec![1, 0], "b, with no past, goes first");
    let held = gpus(8);
    let live = [(b, &held, 3600.0)];
    assert_eq!(
        book.fair_ranks(7200.0, live.into_iter()),
        vec![0, 1],
        "b's run as long as a's, an hour later, weighs more"
    );
    let mut heavy = cohort_queue("c", 8);
    heavy.weight = 3.0;
    let c = book.add(heavy).unwrap();
    book.record_run(c, &gpus(8), 0.0, 3600.0);
    assert_eq!(book.fair_ranks(3600.0, std::iter::empty())[c as usize], 1, "weight 3 divides c's usage");
}

#[test]
fn fair_tree_ranks_a_whole_sub_cohort_before_the_next_sibling() {
    let mut book = Quotas::default();
    let q = |name: &str, cohort: &str| {
        let mut s = QueueSpec::new(name, gpus(8));
        s.cohort = Some(cohort.into());
        s
    };
    let v = book.add(q("vision", "research/vision")).unwrap();
    let n = book.add(q("nlp", "research/nlp")).unwrap();
    let n2 = book.add(q("nlp-2", "research/nlp")).unwrap();
    book.charge(v, None, &gpus(4)).unwrap();
    book.charge(n, None, &gpus(1)).unwrap();
    book.charge(n2, None, &gpus(6)).unwrap();
    // nlp as a cohort holds 7 of 16, vision 4 of 8: nlp's queues rank first, even nlp-2 at 6 of 8.
    assert_eq!(book.fair_ranks(0.0, std::iter::empty()), vec![2, 0, 1]);
}

#[test]
fn borrowed_share_counts_only_what_is_above_nominal() {
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 4)).unwrap();
    let b = book.add(cohort_queue("b", 4)).unwrap();
    book.charge(a, None, &gpus(6)).unwrap();
    assert!((book.borrowed_share(a, &Resources::default(), 0.0) - 0.25).abs() < 1e-12);
    assert_eq!(book.borrowed_share(b, &gpus(4), 0.0), 0.0);
    assert!((book.borrowed_share(b, &gpus(5), 0.0) - 0.125).abs() < 1e-12);
}

#[test]
fn without_a_half_life_the_share_is_the_largest_usage_over_nominal_divided_by_weight() {
    let mut book = Quotas::default();
    let mut spec = QueueSpec::new("a", gpus(8).with(Flavor::Cpu, 100_000));
    spec.weight = 2.0;
    let a = book.add(spec).unwrap();
    let b = book.add(QueueSpec::new("b", gpus(8).with(Flavor::Cpu, 100_000))).unwrap();
    // a: max(4/8, 10/100) / 2 = 0.25; b: max(2/8, 20/100) / 1 = 0.25.
    book.charge(a, None, &gpus(4).with(Flavor::Cpu, 10_000)).unwrap();
    book.charge(b, None, &gpus(2).with(Flavor::Cpu, 20_000)).unwrap();
    assert_eq!(book.fair_ranks(0.0, std::iter::empty()), vec![0, 0], "equal shares, equal rank");
    book.charge(b, None, &Resources::default().with(Flavor::Cpu, 10_000)).unwrap();
    assert_eq!(book.fair_ranks(0.0, std::iter::empty()), vec![0, 1], "b's CPU (0.3) now dominates");
}

#[test]
fn the_tree_sums_kept_as_usage_changes_equal_sums_worked_out_afresh() {
    let mut rng = crate::rng::SplitMix64::new(5);
    let mut book = Quotas::default();
    let mut queues = Vec::new();
    for i in 0..6 {
        let mut q = QueueSpec::new(&format!("q{i}"), gpus(1 + rng.below(8)).with(Flavor::Cpu, 64_000));
        q.cohort = Some(if i < 4 { "a/x".into() } else { "b".into() });
        if rng.below(2) == 0 {
            q.lending_limit = Some(gpus(rng.below(4)));
        }
        queues.push(book.add(q).unwrap());
    }
    let mut held: Vec<Vec<Resources>> = vec![Vec::new(); queues.len()];
    for step in 0..400 {
        let q = rng.below(queues.len() as u64) as usize;
        if rng.below(3) == 0 && !held[q].is_empty() {
            let r = held[q].swap_remove(0);
            book.release(queues[q], None, &r).unwrap();
        } else {
            let r = gpus(1 + rng.below(3)).with(Flavor::Cpu, 1000 * rng.below(8));
            if book.fits(queues[q], None, &r, 0.0).is_ok() {
                book.charge(queues[q], None, &r).unwrap();
                held[q].push(r);
            }
        }
        let kept = book.sums.clone();
        book.resum();
        assert_eq!(kept, book.sums, "step {step}");
    }
}

#[test]
fn a_borrowing_check_answers_alike_from_the_tree_sums_and_from_a_walk_over_the_tree() {
    let mut book = Quotas::default();
    let a = book.add(cohort_queue("a", 8)).unwrap();
    let b = book.add(cohort_queue("b", 4)).unwrap();
    book.charge(a, None, &gpus(10)).unwrap();
    // With a grant active the sums are not used: the same question is answered by walking the tree.
    let mut walked = book.clone();
    walked.grant(Grant { queue: b, flavor: GPU, amount: 0, start: 0.0, end: 100.0 });
    for need in 0..6 {
        let (fast, slow) = (book.fits(a, None, &gpus(need), 0.0), walked.fits(a, None, &gpus(need), 0.0));
        assert_eq!(fast.is_ok(), slow.is_ok(), "{need} GPUs");
        assert_eq!(fast.err().map(|s| s.cohort_can_lend), slow.err().map(|s| s.cohort_can_lend));
    }
    assert!(book.fits(a, None, &gpus(2), 0.0).is_ok() && book.fits(a, None, &gpus(3), 0.0).is_err());
}
