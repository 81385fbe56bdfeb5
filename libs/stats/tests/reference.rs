//! modelperf-stats against the Python reference (statsmodels, scipy, pymannkendall).
//!
//! `reference/fixtures.json` holds inputs and the reference libraries' outputs, computed by
//! `reference/gen_fixtures.py`. The first test checks every value: p-values to 1e-6 absolute,
//! every other value to 1e-6 absolute or relative, whichever is looser (|a − e| ≤ 1e-6 ·
//! max(1, |e|)): statistics like Kendall's variance run into the hundreds of thousands. The second
//! re-runs the script with the pinned libraries of `.tools/stats-venv` (made by
//! `deploy/local/prereqs.sh`) and checks the committed fixtures are what it computes today.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelperf_stats::{
    Moments, StatsError, Summary, Trend, WilcoxonMethod, benjamini_hochberg, holm, mann_kendall_hamed_rao,
    mcnemar_chi_squared, mcnemar_exact, newcombe_difference_interval, paired_t_test, theil_sen, theil_sen_series,
    two_proportion_z_test, welch_difference_interval, welch_t_test, wilcoxon_signed_rank, wilson_interval,
};
use serde::Deserialize;
use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Fixtures {
    let path = crate_dir().join("reference/fixtures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts |actual − expected| ≤ 1e-6 · max(1, |expected|).
#[track_caller]
fn close(case: &str, what: &str, actual: f64, expected: Option<f64>) {
    let expected = expected.unwrap_or_else(|| panic!("{case}: the reference has no {what}"));
    let allowed = TOLERANCE * expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= allowed,
        "{case}: {what} is {actual}, the reference says {expected} (off by {:e})",
        (actual - expected).abs()
    );
}

#[derive(Deserialize)]
struct Fixtures {
    wilson: Vec<WilsonCase>,
    two_proportion_z: Vec<ZCase>,
    welch: Vec<WelchCase>,
    moments: Vec<MomentsCase>,
    mcnemar: Vec<McNemarCase>,
    wilcoxon: Vec<WilcoxonCase>,
    paired_t: Vec<PairedTCase>,
    multitest: Vec<MultitestCase>,
    theil_sen: Vec<TheilSenCase>,
    mann_kendall: Vec<MannKendallCase>,
}

#[derive(Deserialize)]
struct WilsonCase {
    name: String,
    successes: u64,
    n: u64,
    confidence: f64,
    low: Option<f64>,
    high: Option<f64>,
}

#[derive(Deserialize)]
struct ZCase {
    name: String,
    successes_a: u64,
    n_a: u64,
    successes_b: u64,
    n_b: u64,
    z: Option<f64>,
    p_value: Option<f64>,
    newcombe_low: Option<f64>,
    newcombe_high: Option<f64>,
    undefined: Option<String>,
}

#[derive(Deserialize)]
struct Group {
    mean: f64,
    std: f64,
    n: u64,
}

#[derive(Deserialize)]
struct WelchCase {
    name: String,
    a: Group,
    b: Group,
    t: Option<f64>,
    df: Option<f64>,
    p_value: Option<f64>,
    ci_low: Option<f64>,
    ci_high: Option<f64>,
    undefined: Option<String>,
}

#[derive(Deserialize)]
struct MomentsCase {
    name: String,
    values: Vec<f64>,
    mean: f64,
    m2: f64,
    n: u64,
    variance: Option<f64>,
    standard_error: Option<f64>,
    intervals: Vec<IntervalCase>,
    departure: Option<String>,
}

#[derive(Deserialize)]
struct IntervalCase {
    confidence: f64,
    low: Option<f64>,
    high: Option<f64>,
}

#[derive(Deserialize)]
struct Outcome {
    statistic: Option<f64>,
    p_value: Option<f64>,
    undefined: Option<String>,
}

#[derive(Deserialize)]
struct McNemarCase {
    name: String,
    b: u64,
    c: u64,
    exact: Outcome,
    chi_squared: Outcome,
}

#[derive(Deserialize)]
struct WilcoxonCase {
    name: String,
    #[serde(default)]
    differences: Option<Vec<f64>>,
    #[serde(default)]
    x: Option<Vec<f64>>,
    #[serde(default)]
    y: Option<Vec<f64>>,
    method: String,
    statistic: Option<f64>,
    p_value: Option<f64>,
    abs_z: Option<f64>,
    undefined: Option<String>,
}

#[derive(Deserialize)]
struct PairedTCase {
    name: String,
    x: Vec<f64>,
    y: Vec<f64>,
    t: Option<f64>,
    df: Option<f64>,
    p_value: Option<f64>,
}

#[derive(Deserialize)]
struct MultitestCase {
    name: String,
    p_values: Vec<f64>,
    alpha: f64,
    holm: Vec<f64>,
    holm_reject: Vec<bool>,
    bh: Vec<f64>,
    bh_reject: Vec<bool>,
}

#[derive(Deserialize)]
struct TheilSenCase {
    name: String,
    #[serde(default)]
    x: Option<Vec<f64>>,
    y: Vec<f64>,
    confidence: f64,
    slope: Option<f64>,
    intercept: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
}

#[derive(Deserialize)]
struct MannKendallCase {
    name: String,
    y: Vec<f64>,
    alpha: f64,
    lag: Option<usize>,
    #[serde(flatten)]
    result: MannKendallResult,
    departure: Option<String>,
    without_correction: Option<MannKendallResult>,
}

#[derive(Deserialize)]
struct MannKendallResult {
    trend: String,
    h: bool,
    p: Option<f64>,
    z: Option<f64>,
    #[serde(rename = "Tau")]
    tau: Option<f64>,
    s: Option<f64>,
    var_s: Option<f64>,
    slope: Option<f64>,
    intercept: Option<f64>,
}

#[test]
fn every_statistic_equals_the_reference() {
    let fixtures = fixtures();

    for case in &fixtures.wilson {
        let ci = wilson_interval(case.successes, case.n, case.confidence).unwrap();
        close(&case.name, "wilson low", ci.low, case.low);
        close(&case.name, "wilson high", ci.high, case.high);
    }

    for case in &fixtures.two_proportion_z {
        // The difference's interval exists even where the pooled test does not.
        let diff = newcombe_difference_interval(case.successes_a, case.n_a, case.successes_b, case.n_b, 0.95).unwrap();
        close(&case.name, "Newcombe low", diff.low, case.newcombe_low);
        close(&case.name, "Newcombe high", diff.high, case.newcombe_high);
        let test = two_proportion_z_test(case.successes_a, case.n_a, case.successes_b, case.n_b);
        if case.undefined.is_some() {
            assert!(matches!(test, Err(StatsError::Undefined(_))), "{}: {test:?}", case.name);
            continue;
        }
        let test = test.unwrap();
        close(&case.name, "z", test.z, case.z);
        close(&case.name, "p", test.p_value, case.p_value);
    }

    for case in &fixtures.welch {
        let group = |g: &Group| Summary { mean: g.mean, std: g.std, n: g.n };
        let test = welch_t_test(&group(&case.a), &group(&case.b));
        let interval = welch_difference_interval(&group(&case.a), &group(&case.b), 0.95);
        if case.undefined.is_some() {
            // The reference gives the zero-width interval at the difference; without a variance
            // there is no t distribution to take it from, so ours is undefined like the test.
            assert!(matches!(test, Err(StatsError::Undefined(_))), "{}: {test:?}", case.name);
            assert!(matches!(interval, Err(StatsError::Undefined(_))), "{}: {interval:?}", case.name);
            continue;
        }
        let interval = interval.unwrap();
        close(&case.name, "difference low", interval.low, case.ci_low);
        close(&case.name, "difference high", interval.high, case.ci_high);
        let test = test.unwrap();
        close(&case.name, "t", test.t, case.t);
        close(&case.name, "df", test.df, case.df);
        close(&case.name, "p", test.p_value, case.p_value);
    }

    for case in &fixtures.moments {
        // Welford's pass over the values agrees with numpy's two-pass mean and m2...
        let pushed = Moments::from_slice(&case.values);
        assert_eq!(pushed.n, case.n, "{}", case.name);
        close(&case.name, "pushed mean", pushed.mean, Some(case.mean));
        close(&case.name, "pushed m2", pushed.m2, Some(case.m2));
        // ...and the triple as the metrics carry it gives scipy's variance and t interval.
        let moments = Moments { n: case.n, mean: case.mean, m2: case.m2 };
        let variance = moments.variance().unwrap();
        close(&case.name, "variance", variance, case.variance);
        close(&case.name, "standard error", moments.standard_error().unwrap(), case.standard_error);
        for interval in &case.intervals {
            let ci = moments.mean_interval(interval.confidence).unwrap();
            if case.departure.is_some() {
                assert!(interval.low.is_none(), "{}: a departure where the reference is defined", case.name);
                assert_eq!((ci.low, ci.high), (case.mean, case.mean), "{}", case.name);
                continue;
            }
            close(&case.name, "interval low", ci.low, interval.low);
            close(&case.name, "interval high", ci.high, interval.high);
        }
    }

    for case in &fixtures.mcnemar {
        let exact = mcnemar_exact(case.b, case.c).unwrap();
        close(&case.name, "exact statistic", exact.statistic, case.exact.statistic);
        close(&case.name, "exact p", exact.p_value, case.exact.p_value);
        let chi = mcnemar_chi_squared(case.b, case.c);
        if case.chi_squared.undefined.is_some() {
            assert!(matches!(chi, Err(StatsError::Undefined(_))), "{}: {chi:?}", case.name);
            continue;
        }
        let chi = chi.unwrap();
        close(&case.name, "chi-squared statistic", chi.statistic, case.chi_squared.statistic);
        close(&case.name, "chi-squared p", chi.p_value, case.chi_squared.p_value);
    }

    for case in &fixtures.wilcoxon {
        let differences = match (&case.differences, &case.x, &case.y) {
            (Some(d), _, _) => d.clone(),
            (None, Some(x), Some(y)) => x.iter().zip(y).map(|(x, y)| x - y).collect(),
            _ => panic!("{}: no differences and no x, y", case.name),
        };
        let test = wilcoxon_signed_rank(&differences);
        if case.undefined.is_some() {
            assert!(matches!(test, Err(StatsError::Undefined(_))), "{}: {test:?}", case.name);
            continue;
        }
        let test = test.unwrap();
        let method = match case.method.as_str() {
            "exact" => WilcoxonMethod::Exact,
            "permutation" => WilcoxonMethod::Permutation,
            "normal" => WilcoxonMethod::Normal,
            other => panic!("{}: unknown method {other}", case.name),
        };
        assert_eq!(test.method, method, "{}", case.name);
        close(&case.name, "statistic", test.statistic, case.statistic);
        close(&case.name, "p", test.p_value, case.p_value);
        close(&case.name, "|z|", test.z.abs(), case.abs_z);
    }

    for case in &fixtures.paired_t {
        let differences: Vec<f64> = case.x.iter().zip(&case.y).map(|(x, y)| x - y).collect();
        let test = paired_t_test(&differences).unwrap();
        close(&case.name, "t", test.t, case.t);
        close(&case.name, "df", test.df, case.df);
        close(&case.name, "p", test.p_value, case.p_value);
    }

    for case in &fixtures.multitest {
        let check = |what: &str, adjusted: Vec<f64>, expected: &[f64], reject: &[bool]| {
            assert_eq!(adjusted.len(), expected.len(), "{}", case.name);
            for (i, (a, e)) in adjusted.iter().zip(expected).enumerate() {
                close(&case.name, &format!("{what}[{i}]"), *a, Some(*e));
                assert_eq!(*a <= case.alpha, reject[i], "{}: {what} rejects [{i}]", case.name);
            }
        };
        check("holm", holm(&case.p_values).unwrap(), &case.holm, &case.holm_reject);
        check("bh", benjamini_hochberg(&case.p_values).unwrap(), &case.bh, &case.bh_reject);
    }

    for case in &fixtures.theil_sen {
        let fit = match &case.x {
            Some(x) => theil_sen(x, &case.y, case.confidence),
            None => theil_sen_series(&case.y, case.confidence),
        }
        .unwrap();
        close(&case.name, "slope", fit.slope, case.slope);
        close(&case.name, "intercept", fit.intercept, case.intercept);
        close(&case.name, "low", fit.low, case.low);
        close(&case.name, "high", fit.high, case.high);
    }

    for case in &fixtures.mann_kendall {
        let test = mann_kendall_hamed_rao(&case.y, case.alpha, case.lag).unwrap();
        let expected = match (&case.departure, &case.without_correction) {
            (None, _) => &case.result,
            (Some(_), Some(original)) => {
                assert_eq!(test.correction, 1.0, "{}", case.name);
                original
            }
            (Some(_), None) => panic!("{}: a departure without its comparison", case.name),
        };
        let trend = match test.trend {
            Trend::Increasing => "increasing",
            Trend::Decreasing => "decreasing",
            Trend::NoTrend => "no trend",
        };
        assert_eq!(trend, expected.trend, "{}", case.name);
        assert_eq!(test.significant, expected.h, "{}", case.name);
        close(&case.name, "p", test.p_value, expected.p);
        close(&case.name, "z", test.z, expected.z);
        close(&case.name, "tau", test.tau, expected.tau);
        close(&case.name, "s", test.s as f64, expected.s);
        close(&case.name, "var_s", test.var_s, expected.var_s);
        // Sen's slope and the intercept never depend on the correction.
        close(&case.name, "slope", test.slope, case.result.slope);
        close(&case.name, "intercept", test.intercept, case.result.intercept);
    }
}

#[test]
fn the_fixtures_cover_every_method_and_edge() {
    let fixtures = fixtures();
    let methods: Vec<&str> = fixtures.wilcoxon.iter().map(|c| c.method.as_str()).collect();
    for method in ["exact", "permutation", "normal"] {
        assert!(methods.contains(&method), "no Wilcoxon case uses the {method} method");
    }
    assert!(fixtures.wilcoxon.iter().any(|c| c.undefined.is_some()));
    assert!(fixtures.two_proportion_z.iter().any(|c| c.undefined.is_some()));
    assert!(fixtures.welch.iter().any(|c| c.undefined.is_some()));
    assert!(fixtures.mann_kendall.iter().any(|c| c.departure.is_some()));
    assert!(fixtures.mann_kendall.iter().any(|c| c.lag.is_some()));
    assert!(fixtures.mann_kendall.iter().any(|c| c.result.trend == "decreasing"));
    assert!(fixtures.wilson.iter().any(|c| c.successes == 0) && fixtures.wilson.iter().any(|c| c.successes == c.n));
}

/// Numbers equal to 1e-12 relative (a rounding in the last digits of a sum may differ between
/// processors), everything else exactly.
fn same(path: &str, fresh: &Value, committed: &Value, differences: &mut Vec<String>) {
    match (fresh, committed) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            if (a - b).abs() > 1e-12 * a.abs().max(b.abs()).max(1e-300) {
                differences.push(format!("{path}: now {a}, committed {b}"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                same(&format!("{path}[{i}]"), a, b, differences);
            }
        }
        (Value::Object(a), Value::Object(b)) if a.len() == b.len() => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => same(&format!("{path}.{key}"), value, other, differences),
                    None => differences.push(format!("{path}.{key}: not in the committed fixtures")),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => differences.push(format!("{path}: now {a}, committed {b}")),
    }
}

#[test]
fn the_reference_computes_the_committed_fixtures() {
    let venv = crate_dir().join("../../.tools/stats-venv/bin/python");
    assert!(
        Path::new(&venv).exists(),
        "the reference libraries are not installed ({} is missing): run deploy/local/prereqs.sh \
         (make test runs it first)",
        venv.display()
    );
    let out = tempfile::tempdir().unwrap();
    let fresh_path = out.path().join("fixtures.json");
    let status =
        Command::new(&venv).arg(crate_dir().join("reference/gen_fixtures.py")).arg(&fresh_path).status().unwrap();
    assert!(status.success(), "gen_fixtures.py failed: {status}");
    let read = |path: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() };
    let fresh = read(&fresh_path);
    let committed = read(&crate_dir().join("reference/fixtures.json"));
    let mut differences = Vec::new();
    same("fixtures", &fresh, &committed, &mut differences);
    assert!(
        differences.is_empty(),
        "reference/fixtures.json is not what gen_fixtures.py computes now (regenerate it with \
         .tools/stats-venv/bin/python libs/stats/reference/gen_fixtures.py and review):\n{}",
        differences.join("\n")
    );
}
