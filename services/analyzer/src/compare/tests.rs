#![allow(clippy::unwrap_used)]

use chrono::TimeZone;
use modelperf_schema::ModelRef;
use modelperf_schema::event::{Benchmark, Candidate, Chosen, Judgment, RoutingDecision, TaskCompleted};
use modelperf_stats::welch_t_test;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::*;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 4, 0, 0, 0).unwrap()
}

fn dims(kind: &str, model: &str, task_type: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kind".to_owned(), kind.to_owned()),
        ("provider".to_owned(), "acme".to_owned()),
        ("model".to_owned(), model.to_owned()),
        ("task_type".to_owned(), task_type.to_owned()),
    ])
}

/// A completion window of `model` at hour `h`.
fn completions(model: &str, task_type: &str, h: i64, latencies: &[f64], failures: u64, cost: f64) -> WindowMetrics {
    let mut s = Sketch::new();
    latencies.iter().for_each(|l| s.add(*l));
    let start = epoch() + chrono::Duration::hours(h);
    let n = latencies.len() as u64;
    WindowMetrics {
        window: "1h".into(),
        start,
        end: start + chrono::Duration::hours(1),
        dims: dims("task_completed", model, task_type),
        count: n,
        weighted_count: n as f64,
        success: n - failures,
        failure: failures,
        success_rate: Some((n - failures) as f64 / n as f64),
        cost_usd: Some(cost),
        latency_sketch: s.to_bytes(),
        ..WindowMetrics::default()
    }
}

fn judgments(model: &str, task_type: &str, h: i64, scores: &[f64]) -> WindowMetrics {
    let m = Moments::from_slice(scores);
    let start = epoch() + chrono::Duration::hours(h);
    WindowMetrics {
        window: "1h".into(),
        start,
        end: start + chrono::Duration::hours(1),
        dims: dims("judgment", model, task_type),
        count: m.n,
        weighted_count: m.n as f64,
        quality_mean: Some(m.mean),
        quality_m2: Some(m.m2),
        quality_n: m.n,
        ..WindowMetrics::default()
    }
}

fn input(metrics: Vec<WindowMetrics>, events: Vec<Event>) -> Input {
    Input {
        task_type: "code_edit".into(),
        start: epoch(),
        end: epoch() + chrono::Duration::days(1),
        window: "1h".into(),
        metrics,
        events,
        run: None,
        correction: Correction::Holm,
        alpha: 0.05,
        bootstrap: Bootstrap { resamples: 400, ..Bootstrap::default() },
        undecodable: 0,
    }
}

fn lognormal(rng: &mut StdRng, median: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            median * (0.4 * z).exp()
        })
        .collect()
}

fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Two models over 12 hours: every published figure is the library's on the pooled counts, the
/// p-values of all pairs are adjusted together, and the latency estimates are within the sketch's
/// accuracy of the exact percentiles.
#[test]
fn observational_figures_are_the_libraries_on_the_pooled_windows() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut metrics, mut all_fast, mut all_slow) = (Vec::new(), Vec::new(), Vec::new());
    let (mut q_fast, mut q_slow) = (Vec::new(), Vec::new());
    for h in 0..12 {
        let fast = lognormal(&mut rng, 800.0, 100);
        let slow = lognormal(&mut rng, 1200.0, 100);
        metrics.push(completions("fast", "code_edit", h, &fast, 4, 0.5));
        metrics.push(completions("slow", "code_edit", h, &slow, 12, 0.2));
        let qf: Vec<f64> = (0..10).map(|_| 0.80 + 0.1 * rng.random::<f64>()).collect();
        let qs: Vec<f64> = (0..10).map(|_| 0.70 + 0.1 * rng.random::<f64>()).collect();
        metrics.push(judgments("fast", "code_edit", h, &qf));
        metrics.push(judgments("slow", "code_edit", h, &qs));
        // Another task type is not compared.
        metrics.push(completions("other", "chat", h, &fast, 0, 0.1));
        all_fast.extend(fast);
        all_slow.extend(slow);
        q_fast.extend(qf);
        q_slow.extend(qs);
    }
    let c = build(&input(metrics, Vec::new()));
    assert_eq!(c.design, Design::Observational);
    let o = c.observational.as_ref().unwrap();
    assert_eq!(o.windows, 48);
    let labels: Vec<_> = o.models.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(labels, ["acme/fast", "acme/slow"]);
    let (fast, slow) = (&o.models[0], &o.models[1]);
    assert_eq!((fast.success, fast.failure, fast.windows), (1152, 48, 12));
    let w = wilson_interval(1152, 1200, 0.95).unwrap();
    assert_eq!(fast.success_rate.unwrap(), Estimate { value: 0.96, low: w.low, high: w.high });
    for (m, exact) in [(fast, &all_fast), (slow, &all_slow)] {
        for (e, q) in [(m.latency_p50_ms.unwrap(), 0.5), (m.latency_p95_ms.unwrap(), 0.95)] {
            let x = exact_quantile(exact, q);
            assert!((e.value - x).abs() / x < 0.011, "{}: p{q} {e:?} vs exact {x}", m.model);
            assert!(e.low <= e.value && e.value <= e.high, "{e:?}");
        }
    }
    assert!((fast.cost_per_task.unwrap() - 6.0 / 1200.0).abs() < 1e-12);
    assert!((fast.cost_per_success.unwrap() - 6.0 / 1152.0).abs() < 1e-12);

    let p = &o.pairs[0];
    assert_eq!((p.a.as_str(), p.b.as_str()), ("acme/fast", "acme/slow"));
    let z = two_proportion_z_test(1152, 1200, 1056, 1200).unwrap();
    let n = newcombe_difference_interval(1152, 1200, 1056, 1200, 0.95).unwrap();
    let sd = p.success_diff.unwrap();
    assert!((sd.value - 0.08).abs() < 1e-12 && sd.low == n.low && sd.high == n.high, "{sd:?}");
    let st = p.success_test.as_ref().unwrap();
    assert_eq!((st.statistic, st.p_value), (z.z, z.p_value));
    let summary = |v: &[f64]| Moments::from_slice(v).summary().unwrap();
    let t = welch_t_test(&summary(&q_fast), &summary(&q_slow)).unwrap();
    let qt = p.quality_test.as_ref().unwrap();
    assert!((qt.statistic - t.t).abs() < 1e-9 && (qt.p_value - t.p_value).abs() < 1e-12, "{qt:?} {t:?}");
    // Both p-values in one Holm family of two.
    assert_eq!(c.tests, 2);
    let adjusted = holm(&[st.p_value, qt.p_value]).unwrap();
    assert_eq!((st.p_adjusted, qt.p_adjusted), (adjusted[0], adjusted[1]));
    assert!(st.significant && qt.significant);
    // The p95 ratio's interval holds the exact ratio and is below 1: fast is faster.
    let r = p.latency_p95_ratio.unwrap();
    let exact = exact_quantile(&all_fast, 0.95) / exact_quantile(&all_slow, 0.95);
    assert!(r.low < exact && exact < r.high && r.high < 1.0, "{r:?} vs {exact}");
    // The dearer, better model and the cheaper, worse one are both on the front.
    assert_eq!(o.pareto_front, ["acme/slow", "acme/fast"]);
    let ranking = |metric: &str| o.rankings.iter().find(|r| r.metric == metric).unwrap().tiers.clone();
    assert_eq!(ranking("success_rate"), [vec!["acme/fast".to_owned()], vec!["acme/slow".to_owned()]]);
    // The table names both models and the pair.
    let text = render_table(&c);
    assert!(text.contains("acme/fast (pareto)") && text.contains("acme/fast vs acme/slow"), "{text}");
}

/// Three models, two of them indistinguishable: one tier holds both, the third is below.
#[test]
fn models_that_cannot_be_separated_share_a_tier() {
    let mut metrics = Vec::new();
    let lat: Vec<f64> = (0..200).map(|i| 500.0 + i as f64).collect();
    for h in 0..10 {
        metrics.push(completions("a", "code_edit", h, &lat, 10, 1.0)); // 95 %
        metrics.push(completions("b", "code_edit", h, &lat, 11, 1.0)); // 94.5 %
        metrics.push(completions("c", "code_edit", h, &lat, 60, 1.0)); // 70 %
    }
    let mut i = input(metrics, Vec::new());
    i.correction = Correction::Bh;
    let c = build(&i);
    let o = c.observational.unwrap();
    let tiers = &o.rankings.iter().find(|r| r.metric == "success_rate").unwrap().tiers;
    assert_eq!(tiers, &[vec!["acme/a".to_owned(), "acme/b".to_owned()], vec!["acme/c".to_owned()]]);
    // Benjamini–Hochberg over the three success tests (no quality: no judgments).
    let raw: Vec<f64> = o.pairs.iter().map(|p| p.success_test.as_ref().unwrap().p_value).collect();
    let bh = benjamini_hochberg(&raw).unwrap();
    let adjusted: Vec<f64> = o.pairs.iter().map(|p| p.success_test.as_ref().unwrap().p_adjusted).collect();
    assert_eq!(adjusted, bh);
    assert_eq!((c.tests, c.correction.as_str()), (3, "bh"));
    assert!(o.pairs.iter().all(|p| p.quality_test.is_none()));
}

fn model(name: &str) -> ModelRef {
    ModelRef::new("acme", name)
}

fn event(task: &str, h: i64, m: Option<&str>, data: Data) -> Event {
    let mut e = Event::new(epoch() + chrono::Duration::hours(h), "test", data);
    e.task_id = Some(task.into());
    e.task_type = Some("code_edit".into());
    e.model = m.map(model);
    e
}

fn decision(task: &str, chosen: &str, p_chosen: f64, other: &str) -> Event {
    let candidate = |name: &str, p: f64| Candidate {
        agent_id: "agent".into(),
        model: model(name),
        score: 0.5,
        probability: Some(p),
    };
    event(
        task,
        1,
        None,
        Data::RoutingDecision(RoutingDecision {
            strategy: "bandit".into(),
            chosen: Chosen { agent_id: "agent".into(), model: model(chosen) },
            candidates: vec![candidate(chosen, p_chosen), candidate(other, 1.0 - p_chosen)],
            probability: Some(p_chosen),
            ..RoutingDecision::default()
        }),
    )
}

fn completed(task: &str, m: &str, success: bool, latency_ms: f64) -> Event {
    event(task, 1, Some(m), Data::TaskCompleted(TaskCompleted { latency_ms, success, ..TaskCompleted::default() }))
}

/// The router sends easy tasks to `x` with probability 0.8 and hard ones with 0.2; `x` succeeds
/// on 90 % of easy and 30 % of hard tasks, so over all tasks its success rate is 0.6 while what it
/// served succeeded about 78 % of the time. Over 20 seeds the weighted estimate recovers 0.6: its
/// 95 % interval covers it about 19 times in 20, and the estimates average to it.
#[test]
fn weighting_undoes_the_routers_confounding() {
    const SEEDS: u64 = 20;
    let (mut covered, mut sum) = (0, 0.0);
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut events, mut served, mut served_ok) = (Vec::new(), 0u32, 0u32);
        for i in 0..4000 {
            let task = format!("t{i}");
            let hard = rng.random::<f64>() < 0.5;
            let p = if hard { 0.2 } else { 0.8 };
            let to_x = rng.random::<f64>() < p;
            let (chosen, p_chosen, other) = if to_x { ("x", p, "y") } else { ("y", 1.0 - p, "x") };
            events.push(decision(&task, chosen, p_chosen, other));
            let ok = rng.random::<f64>() < if to_x { if hard { 0.3 } else { 0.9 } } else { 0.7 };
            if to_x {
                served += 1;
                served_ok += u32::from(ok);
            }
            events.push(completed(&task, chosen, ok, 100.0));
        }
        let c = build(&input(Vec::new(), events));
        let o = c.observational.unwrap();
        let x = o.weighted.iter().find(|w| w.model == "acme/x" && w.metric == "success_rate").unwrap();
        let naive = f64::from(served_ok) / f64::from(served);
        assert!(naive > 0.74, "seed {seed}: the served tasks are easy ones: {naive}");
        assert_eq!(x.decisions, 4000);
        assert!(x.effective_sample_size < x.chosen as f64, "{x:?}");
        covered += usize::from(x.estimate.low < 0.6 && 0.6 < x.estimate.high);
        sum += x.estimate.value;
        // y's outcome does not depend on difficulty: weighting keeps it at 0.7.
        let y = o.weighted.iter().find(|w| w.model == "acme/y" && w.metric == "success_rate").unwrap();
        assert!((y.estimate.value - 0.7).abs() < 0.05, "{y:?}");
    }
    let mean = sum / SEEDS as f64;
    assert!(covered >= 17 && (mean - 0.6).abs() < 0.01, "covered {covered} of {SEEDS}, mean estimate {mean}");
}

fn case(run: &str, id: &str, mut e: Event) -> Event {
    e.benchmark = Some(Benchmark { run_id: run.into(), case_id: id.into() });
    e
}

fn judged(task: &str, m: &str, score: f64) -> Event {
    event(task, 1, Some(m), Data::Judgment(Judgment { judge_model: model("judge"), score, ..Judgment::default() }))
}

/// A benchmark run: the tests run on the shared cases only, their inputs are the paired
/// differences, and repeats and other runs are left out.
#[test]
fn benchmark_runs_are_compared_paired_on_shared_cases() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut events = Vec::new();
    let (mut pairs, mut quality_diffs, mut latency_diffs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..60 {
        let id = format!("case-{i}");
        let ok_a = rng.random::<f64>() < 0.9;
        let ok_b = rng.random::<f64>() < 0.6;
        let (qa, qb) = (0.8 + 0.1 * rng.random::<f64>(), 0.7 + 0.1 * rng.random::<f64>());
        let (la, lb) = (1000.0 + 500.0 * rng.random::<f64>(), 1100.0 + 500.0 * rng.random::<f64>());
        events.push(case("r1", &id, completed(&format!("a{i}"), "a", ok_a, la)));
        events.push(case("r1", &id, judged(&format!("a{i}"), "a", qa)));
        if i < 50 {
            // b skipped ten cases: 50 shared.
            events.push(case("r1", &id, completed(&format!("b{i}"), "b", ok_b, lb)));
            events.push(case("r1", &id, judged(&format!("b{i}"), "b", qb)));
            pairs.push((ok_a, ok_b));
            quality_diffs.push(qa - qb);
            latency_diffs.push(la - lb);
        }
        // Another run of the same models is not part of this comparison.
        events.push(case("r2", &id, completed(&format!("c{i}"), "b", true, 1.0)));
    }
    // A repeat of a case: the first answer counts.
    events.push(case("r1", "case-0", completed("again", "a", false, 1.0)));
    let mut i = input(Vec::new(), events);
    i.run = Some("r1".into());
    let c = build(&i);
    assert_eq!(c.design, Design::Paired);
    let p = c.paired.as_ref().unwrap();
    assert_eq!(p.cases, 60);
    assert_eq!((p.models[0].cases, p.models[0].duplicates, p.models[1].cases), (60, 1, 50));
    let pair = &p.pairs[0];
    assert_eq!((pair.shared_cases, pair.judged_cases), (50, 50));
    let (b, cc) = discordant_counts(pairs.iter().copied());
    assert_eq!((pair.only_a_succeeded, pair.only_b_succeeded), (b, cc));
    let m = mcnemar_exact(b, cc).unwrap();
    assert_eq!(pair.success_test.as_ref().unwrap().p_value, m.p_value);
    let w = wilcoxon_signed_rank(&quality_diffs).unwrap();
    assert_eq!(pair.quality_test.as_ref().unwrap().p_value, w.p_value);
    let q = Moments::from_slice(&quality_diffs).mean_interval(0.95).unwrap();
    let qd = pair.quality_diff.unwrap();
    assert!((qd.low - q.low).abs() < 1e-12 && (qd.high - q.high).abs() < 1e-12);
    let l = wilcoxon_signed_rank(&latency_diffs).unwrap();
    assert_eq!(pair.latency_test.as_ref().unwrap().p_value, l.p_value);
    // Three tests in one Holm family.
    let raw = [m.p_value, w.p_value, l.p_value];
    let adjusted = holm(&raw).unwrap();
    assert_eq!(pair.success_test.as_ref().unwrap().p_adjusted, adjusted[0]);
    assert_eq!(pair.latency_test.as_ref().unwrap().p_adjusted, adjusted[2]);
    assert_eq!(c.tests, 3);
    let text = render_table(&c);
    assert!(text.contains("benchmark run r1: 60 cases") && text.contains("acme/a vs acme/b"), "{text}");
}

#[test]
fn an_empty_period_says_so() {
    let c = build(&input(Vec::new(), Vec::new()));
    assert!(c.notes.iter().any(|n| n.contains("no 1h windows of task type \"code_edit\"")), "{:?}", c.notes);
    assert!(c.observational.unwrap().models.is_empty());
}
