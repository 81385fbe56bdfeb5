#!/usr/bin/env python3
"""Computes the reference values that libs/stats/tests/reference.rs checks modelperf-stats against.

Every expected value comes from the library call a statistician would use (statsmodels, scipy,
pymannkendall, pinned in requirements.txt); the inputs are fixed or drawn from seeded generators,
so the output is the same on every run with the same versions. Where the reference returns NaN or
infinity (a statistic undefined for the input), the value is written as null and the case carries
`undefined` (modelperf-stats returns an error there) or `departure` (modelperf-stats returns a
documented value instead; the case says which reference it is compared with then).

Usage: gen_fixtures.py [OUTPUT]   (default: fixtures.json beside this script)
Run it with the venv deploy/local/prereqs.sh makes: .tools/stats-venv/bin/python.
"""

import json
import math
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pymannkendall as mk
import scipy
import statsmodels
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (confint_proportions_2indep, proportion_confint,
                                          proportions_ztest)


def num(x):
    """A JSON number, or None for NaN and infinities."""
    x = float(x)
    return x if math.isfinite(x) else None


def floats(values):
    return [float(v) for v in values]


def rounded(values, decimals=4):
    """Inputs rounded to a few decimals: short in the JSON, and read back bit for bit."""
    return floats(np.round(np.asarray(values, dtype=float), decimals))


def wilson_cases():
    inputs = [
        ("half", 5, 10, 0.95),
        ("typical", 172, 200, 0.95),
        ("none", 0, 10, 0.95),
        ("all", 10, 10, 0.95),
        ("single_success", 1, 1, 0.95),
        ("single_failure", 0, 1, 0.95),
        ("rare", 1, 1000, 0.95),
        ("common", 999, 1000, 0.95),
        ("ninety", 37, 50, 0.90),
        ("ninety_nine", 37, 50, 0.99),
        ("eighty_small", 3, 7, 0.80),
        ("large", 123456, 1000000, 0.95),
    ]
    cases = []
    for name, successes, n, confidence in inputs:
        low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
        cases.append(dict(name=name, successes=successes, n=n, confidence=confidence,
                          low=num(low), high=num(high)))
    return cases


def z_test_cases():
    inputs = [
        ("typical", 172, 200, 151, 200),
        ("small", 5, 10, 6, 10),
        ("zero_in_one", 0, 50, 3, 50),
        ("all_in_one", 50, 50, 47, 50),
        ("rare", 1, 1000, 9, 1000),
        ("equal", 30, 100, 30, 100),
        ("unequal_sizes", 12, 40, 150, 300),
        ("tiny", 1, 2, 0, 3),
        ("no_successes", 0, 10, 0, 20),
        ("no_failures", 10, 10, 20, 20),
    ]
    cases = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, xa, na, xb, nb in inputs:
            z, p = proportions_ztest([xa, xb], [na, nb])
            low, high = confint_proportions_2indep(xa, na, xb, nb, method="newcomb", compare="diff",
                                                   alpha=0.05)
            case = dict(name=name, successes_a=xa, n_a=na, successes_b=xb, n_b=nb,
                        z=num(z), p_value=num(p), newcombe_low=num(low), newcombe_high=num(high))
            if case["z"] is None or case["p_value"] is None:
                case["undefined"] = "pooled proportion 0 or 1: the reference returns NaN"
            cases.append(case)
    return cases


def welch_cases():
    rng = np.random.default_rng(20240601)
    samples = [
        ("equal_sizes", rng.normal(0.7, 0.1, 30), rng.normal(0.65, 0.1, 30)),
        ("unequal", rng.normal(0.8, 0.05, 12), rng.normal(0.7, 0.2, 80)),
        ("tiny", rng.normal(1.0, 1.0, 2), rng.normal(2.0, 1.0, 3)),
        ("one_constant", np.array([0.5, 0.5, 0.5, 0.5]), rng.normal(0.6, 0.1, 9)),
        ("large", rng.normal(250.0, 40.0, 5000), rng.normal(251.0, 45.0, 4000)),
        ("same_mean", rng.normal(3.0, 1.0, 25), rng.normal(3.0, 2.0, 25)),
        ("far_apart", rng.normal(0.0, 1.0, 15), rng.normal(5.0, 1.0, 15)),
        ("both_constant", np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0])),
    ]
    cases = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, a, b in samples:
            a, b = np.asarray(rounded(a)), np.asarray(rounded(b))
            mean_a, std_a, mean_b, std_b = a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1)
            t, p = stats.ttest_ind_from_stats(mean_a, std_a, len(a), mean_b, std_b, len(b),
                                              equal_var=False)
            result = stats.ttest_ind(a, b, equal_var=False)
            df = result.df
            ci = result.confidence_interval(0.95)
            case = dict(name=name,
                        a=dict(mean=float(mean_a), std=float(std_a), n=len(a)),
                        b=dict(mean=float(mean_b), std=float(std_b), n=len(b)),
                        t=num(t), df=num(df), p_value=num(p),
                        ci_low=num(ci.low), ci_high=num(ci.high))
            if case["t"] is None or case["p_value"] is None:
                case["undefined"] = "both variances zero: the reference returns NaN"
            cases.append(case)
    return cases


def moments_cases():
    rng = np.random.default_rng(7)
    samples = [
        ("quality", rng.beta(5, 2, 40)),
        ("two", np.array([0.25, 0.75])),
        ("small", rng.normal(10.0, 3.0, 5)),
        ("offset", 1e6 + rng.normal(0.0, 0.01, 200)),
        ("large", rng.gamma(2.0, 100.0, 3000)),
        ("constant", np.array([0.8, 0.8, 0.8, 0.8])),
    ]
    cases = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, values in samples:
            values = np.asarray(rounded(values, 6))
            mean = values.mean()
            m2 = float(np.sum((values - mean) ** 2))
            n = len(values)
            variance = values.var(ddof=1)
            se = stats.sem(values)
            case = dict(name=name, values=floats(values), mean=float(mean), m2=m2, n=n,
                        variance=num(variance), standard_error=num(se), intervals=[])
            for confidence in (0.95, 0.9):
                low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=se)
                case["intervals"].append(dict(confidence=confidence, low=num(low), high=num(high)))
            if any(i["low"] is None for i in case["intervals"]):
                case["departure"] = ("zero variance: the reference interval is NaN, "
                                     "modelperf-stats gives the point [mean, mean]")
            cases.append(case)
    return cases


def mcnemar_cases():
    inputs = [(0, 0), (1, 0), (0, 5), (1, 1), (3, 3), (7, 8), (10, 2), (25, 40), (100, 130),
              (50, 0), (12, 30), (400, 350)]
    cases = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for b, c in inputs:
            table = [[20, b], [c, 30]]
            exact = mcnemar(table, exact=True)
            chi2 = mcnemar(table, exact=False, correction=True)
            case = dict(name=f"b{b}_c{c}", b=b, c=c,
                        exact=dict(statistic=num(exact.statistic), p_value=num(exact.pvalue)),
                        chi_squared=dict(statistic=num(chi2.statistic), p_value=num(chi2.pvalue)))
            if case["chi_squared"]["statistic"] is None:
                case["chi_squared"]["undefined"] = (
                    "no discordant pairs: the reference divides by zero "
                    f"(statistic {chi2.statistic}, p {chi2.pvalue})")
            cases.append(case)
    return cases


def wilcoxon_mode(d):
    """The method scipy.stats.wilcoxon(method="auto") picks, from its documented rule."""
    d = np.asarray(d)
    nonzero = np.abs(d[d != 0])
    ties = len(np.unique(nonzero)) < len(nonzero)
    if len(d) > 50:
        return "normal"
    if not ties and len(nonzero) == len(d):
        return "exact"
    return "permutation" if len(d) <= 13 else "normal"


def wilcoxon_cases():
    rng = np.random.default_rng(31337)
    diffs = [
        ("exact_8", rng.normal(0.3, 1.0, 8)),
        ("exact_20", rng.normal(0.5, 1.0, 20)),
        ("exact_50", rng.normal(0.1, 1.0, 50)),
        ("exact_all_positive", np.array([0.5, 1.25, 2.0, 0.75, 3.5, 1.5])),
        ("normal_51", rng.normal(0.2, 1.0, 51)),
        ("normal_ties_120", np.round(rng.normal(0.4, 3.0, 120))),
        ("normal_ties_14", np.round(rng.normal(1.0, 2.0, 14))),
        ("normal_zeros_30", np.round(rng.normal(0.0, 1.5, 30))),
        ("permutation_ties_10", np.round(rng.normal(0.8, 2.0, 10))),
        ("permutation_zeros_12", np.concatenate([[0.0, 0.0], rounded(rng.normal(0.5, 1.0, 10))])),
        ("permutation_13", np.round(rng.normal(-1.0, 2.0, 13))),
        ("permutation_zeros_5", np.array([0.0, 1.0, -2.0, 3.0, 4.0])),
        ("all_zero", np.zeros(5)),
    ]
    cases = []
    for name, d in diffs:
        d = np.asarray(rounded(d))
        res = stats.wilcoxon(d)
        mode = wilcoxon_mode(d)
        case = dict(name=name, differences=floats(d), method=mode,
                    statistic=num(res.statistic), p_value=num(res.pvalue))
        if np.all(d == 0):
            case["undefined"] = f"every difference is zero: the reference gives p = {res.pvalue}"
        else:
            # The rule above must be the one scipy applied: its p-value under the explicit
            # method is the same.
            explicit = {"exact": "exact", "normal": "asymptotic",
                        "permutation": stats.PermutationMethod()}[mode]
            assert stats.wilcoxon(d, method=explicit).pvalue == res.pvalue, name
            case["abs_z"] = num(abs(stats.wilcoxon(d, method="asymptotic").zstatistic))
        cases.append(case)
    # A paired sample as two arrays: scipy takes x - y.
    x = np.asarray(rounded(rng.normal(0.7, 0.1, 25)))
    y = np.asarray(rounded(x + rng.normal(-0.02, 0.05, 25)))
    res = stats.wilcoxon(x, y)
    cases.append(dict(name="paired_xy_25", x=floats(x), y=floats(y), method=wilcoxon_mode(x - y),
                      statistic=num(res.statistic), p_value=num(res.pvalue),
                      abs_z=num(abs(stats.wilcoxon(x, y, method="asymptotic").zstatistic))))
    return cases


def paired_t_cases():
    rng = np.random.default_rng(99)
    samples = []
    for name, n, shift, noise in [("typical", 10, 0.05, 0.1), ("three", 3, 0.5, 1.0),
                                  ("large", 500, 0.01, 0.2), ("no_effect", 40, 0.0, 1.0)]:
        x = rng.normal(1.0, 0.3, n)
        samples.append((name, x, x - shift + rng.normal(0.0, noise, n)))
    x = rng.normal(100.0, 10.0, 20)
    y = x + rng.normal(-3.0, 2.0, 20)
    y[4] += 80.0  # one wild case
    samples.append(("outlier", x, y))
    cases = []
    for name, x, y in samples:
        x, y = np.asarray(rounded(x)), np.asarray(rounded(y))
        res = stats.ttest_rel(x, y)
        cases.append(dict(name=name, x=floats(x), y=floats(y), t=num(res.statistic),
                          df=num(res.df), p_value=num(res.pvalue)))
    return cases


def multitest_cases():
    rng = np.random.default_rng(4242)
    lists = [
        ("uniform_10", rounded(rng.uniform(0, 1, 10), 6)),
        ("mixed_50", rounded(np.concatenate([rng.uniform(0, 0.01, 10), rng.uniform(0, 1, 40)]), 8)),
        ("ties", [0.01, 0.01, 0.04, 0.04, 0.2, 0.2, 0.2]),
        ("edges", [0.0, 1.0, 0.5, 0.0, 1.0]),
        ("single", [0.03]),
        ("tiny", [1e-12, 3e-9, 2e-6, 0.0004, 0.02]),
        ("descending", [0.9, 0.5, 0.2, 0.05, 0.01, 0.001]),
        ("all_large", [0.6, 0.7, 0.8, 0.95]),
    ]
    cases = []
    for name, p in lists:
        holm_reject, holm, _, _ = multipletests(p, alpha=0.05, method="holm")
        bh_reject, bh, _, _ = multipletests(p, alpha=0.05, method="fdr_bh")
        cases.append(dict(name=name, p_values=floats(p), alpha=0.05,
                          holm=floats(holm), holm_reject=[bool(r) for r in holm_reject],
                          bh=floats(bh), bh_reject=[bool(r) for r in bh_reject]))
    return cases


def theil_sen_cases():
    rng = np.random.default_rng(1950)
    t = np.arange(30.0)
    series = [
        ("trend_30", None, 100.0 + 0.8 * t + rng.normal(0.0, 3.0, 30), 0.95),
        ("no_trend_40", None, rng.normal(50.0, 5.0, 40), 0.95),
        ("outliers", None, np.where(np.arange(25) % 7 == 3, 500.0, 10.0 + 0.2 * np.arange(25))
         + rng.normal(0.0, 0.5, 25), 0.95),
        ("tied_x", np.repeat(np.arange(8.0), 3), np.repeat(np.arange(8.0), 3) * 1.5
         + rng.normal(0.0, 1.0, 24), 0.95),
        ("tied_y", None, np.round(rng.normal(5.0, 1.0, 30)), 0.95),
        ("unsorted_x", rng.uniform(0.0, 100.0, 20), None, 0.95),
        ("two", None, np.array([1.0, 3.0]), 0.95),
        ("three", None, np.array([2.0, 1.0, 4.0]), 0.95),
        ("ninety", None, 0.5 * t + rng.normal(0.0, 2.0, 30), 0.90),
        ("ninety_nine", None, 0.5 * t + rng.normal(0.0, 2.0, 30), 0.99),
        ("large_200", None, 3.0 - 0.01 * np.arange(200.0) + rng.normal(0.0, 0.5, 200), 0.95),
        ("constant", None, np.full(10, 4.0), 0.95),
    ]
    cases = []
    for name, x, y, confidence in series:
        if name == "unsorted_x":
            y = 2.0 - 0.3 * x + rng.normal(0.0, 4.0, len(x))
            x = rounded(x)
        y = rounded(y)
        res = stats.theilslopes(y, x, alpha=confidence)
        case = dict(name=name, y=y, confidence=confidence, slope=num(res.slope),
                    intercept=num(res.intercept), low=num(res.low_slope), high=num(res.high_slope))
        if x is not None:
            case["x"] = floats(x)
        cases.append(case)
    return cases


def mann_kendall_cases():
    rng = np.random.default_rng(1998)

    def ar1(n, phi, sigma):
        e = rng.normal(0.0, sigma, n)
        out = np.zeros(n)
        for i in range(n):
            out[i] = (phi * out[i - 1] if i else 0.0) + e[i]
        return out

    t = np.arange(100.0)
    series = [
        ("noise_50", rng.normal(0.0, 1.0, 50), 0.05, None),
        ("trend_60", 0.05 * np.arange(60.0) + rng.normal(0.0, 1.0, 60), 0.05, None),
        ("ar1_trend_100", 0.02 * t + ar1(100, 0.7, 1.0), 0.05, None),
        ("ar1_no_trend_100", ar1(100, 0.8, 1.0), 0.05, None),
        ("ar1_lag3", 0.02 * t + ar1(100, 0.7, 1.0), 0.05, 3),
        ("ties_40", np.round(0.05 * np.arange(40.0) + rng.normal(0.0, 1.0, 40)), 0.05, None),
        ("decreasing_30", 10.0 - 0.2 * np.arange(30.0) + rng.normal(0.0, 1.0, 30), 0.05, None),
        ("seasonal_48", 5.0 * np.sin(np.arange(48.0) * 2 * np.pi / 24)
         + 0.03 * np.arange(48.0) + rng.normal(0.0, 0.5, 48), 0.05, None),
        ("alternating_30", np.where(np.arange(30) % 2 == 0, 1.0, -1.0)
         + rng.normal(0.0, 0.3, 30), 0.05, None),
        ("three", np.array([1.0, 3.0, 2.0]), 0.05, None),
        ("five", np.array([1.0, 2.0, 4.0, 3.0, 5.0]), 0.05, None),
        ("alpha_10", 0.01 * np.arange(40.0) + rng.normal(0.0, 0.3, 40), 0.10, None),
        ("constant", np.full(12, 3.0), 0.05, None),
        ("linear", 2.0 + 0.5 * np.arange(20.0), 0.05, None),
    ]
    fields = ("trend", "h", "p", "z", "Tau", "s", "var_s", "slope", "intercept")
    cases = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, y, alpha, lag in series:
            y = rounded(y)
            res = mk.hamed_rao_modification_test(y, alpha=alpha, lag=lag)
            case = dict(name=name, y=y, alpha=alpha, lag=lag)
            for field in fields:
                value = getattr(res, field)
                case[field] = value if isinstance(value, str) else (
                    bool(value) if field == "h" else num(value))
            if case["var_s"] is None:
                original = mk.original_test(y, alpha=alpha)
                case["departure"] = (
                    "the detrended series is constant, so its autocorrelation is NaN and so is "
                    "the reference's variance; modelperf-stats applies no correction, which is "
                    "the original Mann-Kendall test")
                case["without_correction"] = {
                    field: getattr(original, field) if field == "trend" else (
                        bool(getattr(original, field)) if field == "h"
                        else num(getattr(original, field)))
                    for field in fields}
            cases.append(case)
    return cases


def main():
    # The undefined cases make numpy and scipy warn (division by zero, precision loss on constant
    # data); they are recorded as such in the fixtures, so the warnings are noise here.
    warnings.simplefilter("ignore", RuntimeWarning)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("fixtures.json")
    fixtures = {
        "generated_by": "libs/stats/reference/gen_fixtures.py",
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__,
                     "statsmodels": statsmodels.__version__,
                     "pymannkendall": version("pymannkendall")},
        "wilson": wilson_cases(),
        "two_proportion_z": z_test_cases(),
        "welch": welch_cases(),
        "moments": moments_cases(),
        "mcnemar": mcnemar_cases(),
        "wilcoxon": wilcoxon_cases(),
        "paired_t": paired_t_cases(),
        "multitest": multitest_cases(),
        "theil_sen": theil_sen_cases(),
        "mann_kendall": mann_kendall_cases(),
    }
    out.write_text(json.dumps(fixtures, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
