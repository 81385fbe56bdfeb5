//! Ranks and medians shared by the rank tests and the trend estimators.

/// Average ranks (1-based; tied values share the mean of the ranks they span) and the size of
/// every tie group (groups of one included), in ascending order of value.
///
/// The values must not be NaN (callers check).
pub(crate) fn average_ranks(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut groups = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // `==` rather than `total_cmp`: 0.0 and -0.0 tie, as they do for the reference.
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Ranks start + 1 ..= end; their mean.
        let rank = (start + 1 + end) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| ranks[i] = rank);
        groups.push(end - start);
        start = end;
    }
    (ranks, groups)
}

/// The median of values sorted in ascending order: the middle one, or the mean of the two
/// middle ones. `None` when empty.
pub(crate) fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The median of any values (sorts a copy). `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

/// Checks that every value is finite.
pub(crate) fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_their_mean_rank() {
        let (ranks, groups) = average_ranks(&[3.0, 1.0, 2.0, 2.0, 5.0, 2.0]);
        assert_eq!(ranks, vec![5.0, 1.0, 3.0, 3.0, 6.0, 3.0]);
        assert_eq!(groups, vec![1, 3, 1, 1]);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
