//! Multiple-testing corrections: adjusted p-values, so that "reject when adjusted p ≤ α"
//! controls the family-wise error rate (Holm) or the false discovery rate
//! (Benjamini–Hochberg) at α across everything tested together.

use crate::StatsError;

/// Holm's step-down adjusted p-values, in the order of the input.
///
/// With the m p-values sorted ascending, p₍₁₎ ≤ … ≤ p₍ₘ₎:
///
/// ```text
/// p̃₍ᵢ₎ = min(1, max_{j ≤ i} (m − j + 1) p₍ⱼ₎)
/// ```
///
/// Holm, S. (1979), "A simple sequentially rejective multiple test procedure", Scandinavian
/// Journal of Statistics 6, 65–70. Controls the family-wise error rate under any dependence.
/// Reference: `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`.
pub fn holm(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = ascending_order(p_values)?;
    let m = p_values.len();
    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running_max = running_max.max((m - rank) as f64 * p_values[i]);
        adjusted[i] = running_max.min(1.0);
    }
    Ok(adjusted)
}

/// Benjamini–Hochberg step-up adjusted p-values ("q-values"), in the order of the input.
///
/// With the m p-values sorted ascending:
///
/// ```text
/// p̃₍ᵢ₎ = min(1, min_{j ≥ i} m p₍ⱼ₎ / j)
/// ```
///
/// Benjamini, Y. and Hochberg, Y. (1995), "Controlling the false discovery rate: a practical
/// and powerful approach to multiple testing", JRSS B 57, 289–300. Controls the false
/// discovery rate for independent or positively dependent tests. Reference:
/// `statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]`.
pub fn benjamini_hochberg(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = ascending_order(p_values)?;
    let m = p_values.len();
    let mut adjusted = vec![0.0; m];
    let mut running_min = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        // p / (j/m) rather than m·p/j: j/m ≤ 1, so the rounded quotient is never below p.
        running_min = running_min.min(p_values[i] / ((rank + 1) as f64 / m as f64));
        adjusted[i] = running_min.min(1.0);
    }
    Ok(adjusted)
}

/// The indices of the p-values from the smallest to the largest, after checking each lies in
/// [0, 1]. Ties keep their input order; the adjusted values do not depend on it.
fn ascending_order(p_values: &[f64]) -> Result<Vec<usize>, StatsError> {
    if !p_values.iter().all(|p| (0.0..=1.0).contains(p)) {
        return Err(StatsError::InvalidArgument("p-values must be in [0, 1]"));
    }
    let mut order: Vec<usize> = (0..p_values.len()).collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn by_hand() {
        let p = [0.01, 0.04, 0.03, 0.2];
        let holm = holm(&p).unwrap();
        let expected = [0.04, 0.09, 0.09, 0.2];
        holm.iter().zip(expected).for_each(|(a, e)| assert!((a - e).abs() < 1e-12, "{holm:?}"));
        let bh = benjamini_hochberg(&p).unwrap();
        let expected = [0.04, 0.0533333333333333, 0.0533333333333333, 0.2];
        bh.iter().zip(expected).for_each(|(a, e)| assert!((a - e).abs() < 1e-12, "{bh:?}"));
    }

    #[test]
    fn empty_and_invalid() {
        assert_eq!(holm(&[]).unwrap(), Vec::<f64>::new());
        assert!(matches!(benjamini_hochberg(&[0.5, 1.5]), Err(StatsError::InvalidArgument(_))));
        assert!(matches!(holm(&[f64::NAN]), Err(StatsError::InvalidArgument(_))));
    }

    fn assert_monotone_and_not_below(raw: &[f64], adjusted: &[f64]) -> Result<(), TestCaseError> {
        for i in 0..raw.len() {
            prop_assert!(adjusted[i] >= raw[i] && adjusted[i] <= 1.0, "{raw:?} → {adjusted:?}");
            for j in 0..raw.len() {
                if raw[i] <= raw[j] {
                    prop_assert!(adjusted[i] <= adjusted[j], "{raw:?} → {adjusted:?}");
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn adjusted_p_values_are_monotone_and_at_least_the_raw_ones(
            raw in prop::collection::vec(0.0f64..=1.0, 0..30),
        ) {
            let holm = holm(&raw).unwrap();
            let bh = benjamini_hochberg(&raw).unwrap();
            assert_monotone_and_not_below(&raw, &holm)?;
            assert_monotone_and_not_below(&raw, &bh)?;
            // Holm controls the stronger error rate, so it never adjusts less (up to the
            // rounding of m·p/m against p).
            for (h, b) in holm.iter().zip(&bh) {
                prop_assert!(*h >= b - 1e-15, "{h} < {b}");
            }
        }
    }
}
