//! Inverse-propensity weighting: what a model's mean outcome would have been had it served
//! every task, estimated from traffic where the router chose among models with known
//! probabilities. Production comparisons are otherwise observational (the router's choices
//! confound them).

use crate::StatsError;

/// One logged task, seen from the model being estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Logged {
    /// Whether the router sent this task to the model.
    pub chosen: bool,
    /// The probability, at decision time, that the router would send it to the model, in
    /// (0, 1]. Only read when `chosen`.
    pub propensity: f64,
    /// The outcome (success as 0/1, a quality score, a cost...). Only read when `chosen`.
    pub outcome: f64,
}

/// An inverse-propensity-weighted estimate of a mean outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpwEstimate {
    /// The estimated mean outcome over all logged tasks.
    pub mean: f64,
    /// Its standard error (see each estimator).
    pub standard_error: f64,
    /// Kish's effective sample size of the chosen tasks, (Σw)²/Σw²: how many equally
    /// weighted tasks carry as much information. Far below the chosen count means a few
    /// rare choices dominate.
    pub effective_sample_size: f64,
    /// Tasks the model served.
    pub chosen: usize,
    /// Tasks logged.
    pub n: usize,
}

/// The Horvitz–Thompson (plain IPW) estimate of the mean outcome over all n logged tasks, with
/// weights wᵢ = 1/πᵢ on the tasks the model served:
///
/// ```text
/// μ̂ = (1/n) Σ zᵢ,   zᵢ = 1[chosen] yᵢ/πᵢ,   SE = s_z/√n   (s_z: sample std of z, n − 1)
/// ```
///
/// Unbiased when the propensities are right and every task could have gone to the model
/// (πᵢ > 0), but its variance explodes with small propensities. Horvitz, D. G. and Thompson,
/// D. J. (1952), "A generalization of sampling without replacement from a finite universe",
/// JASA 47, 663–685.
pub fn ipw_mean(logged: &[Logged]) -> Result<IpwEstimate, StatsError> {
    let weights = check(logged)?;
    let n = logged.len() as f64;
    let z: Vec<f64> =
        logged.iter().zip(&weights).map(|(task, w)| if task.chosen { w * task.outcome } else { 0.0 }).collect();
    let mean = z.iter().sum::<f64>() / n;
    let variance = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    Ok(estimate(logged, &weights, mean, (variance / n).sqrt()))
}

/// The self-normalised (Hájek) IPW estimate: the weighted mean of the served tasks' outcomes,
///
/// ```text
/// μ̂ = Σ wᵢyᵢ / Σ wᵢ,   SE = √(Σ wᵢ²(yᵢ − μ̂)²) / Σ wᵢ     (over the served tasks)
/// ```
///
/// with the linearised (sandwich) standard error. Slightly biased but far more stable than
/// [`ipw_mean`], and always within the range of the outcomes. Hájek, J. (1971), comment on
/// "An essay on the logical foundations of survey sampling"; in off-policy evaluation,
/// Swaminathan, A. and Joachims, T. (2015), "The self-normalized estimator for counterfactual
/// learning", NeurIPS.
pub fn ipw_mean_self_normalised(logged: &[Logged]) -> Result<IpwEstimate, StatsError> {
    let weights = check(logged)?;
    let served = || logged.iter().zip(&weights).filter(|(task, _)| task.chosen);
    let total: f64 = served().map(|(_, w)| w).sum();
    let mean = served().map(|(task, w)| w * task.outcome).sum::<f64>() / total;
    let spread: f64 = served().map(|(task, w)| (w * (task.outcome - mean)).powi(2)).sum();
    Ok(estimate(logged, &weights, mean, spread.sqrt() / total))
}

/// Validates the log and returns each task's weight 1/π (0 for tasks not served).
fn check(logged: &[Logged]) -> Result<Vec<f64>, StatsError> {
    let chosen = logged.iter().filter(|task| task.chosen).count();
    if logged.len() < 2 || chosen == 0 {
        return Err(StatsError::TooFewObservations {
            what: "an IPW estimate (2 tasks, one of them served)",
            needed: 2,
            got: logged.len().min(2 * chosen),
        });
    }
    logged
        .iter()
        .map(|task| match task.chosen {
            false => Ok(0.0),
            true if !(task.propensity > 0.0 && task.propensity <= 1.0) => {
                Err(StatsError::InvalidArgument("propensities must be in (0, 1]"))
            }
            true if !task.outcome.is_finite() => Err(StatsError::InvalidArgument("outcomes must be finite")),
            true => Ok(1.0 / task.propensity),
        })
        .collect()
}

fn estimate(logged: &[Logged], weights: &[f64], mean: f64, standard_error: f64) -> IpwEstimate {
    let sum: f64 = weights.iter().sum();
    let squares: f64 = weights.iter().map(|w| w * w).sum();
    IpwEstimate {
        mean,
        standard_error,
        effective_sample_size: sum * sum / squares,
        chosen: logged.iter().filter(|task| task.chosen).count(),
        n: logged.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::SplitMix64;

    fn served(propensity: f64, outcome: f64) -> Logged {
        Logged { chosen: true, propensity, outcome }
    }
    const NOT_SERVED: Logged = Logged { chosen: false, propensity: f64::NAN, outcome: f64::NAN };

    #[test]
    fn by_hand() {
        let logged = [served(0.5, 1.0), served(0.25, 0.0), NOT_SERVED, NOT_SERVED];
        // z = [2, 0, 0, 0]: mean 0.5, s² = (2.25 + 3 · 0.25)/3 = 1, SE = 1/2.
        let ht = ipw_mean(&logged).unwrap();
        assert!((ht.mean - 0.5).abs() < 1e-15 && (ht.standard_error - 0.5).abs() < 1e-15);
        // Weights 2 and 4: μ = 2/6; SE = √(4·(2/3)² + 16·(1/3)²)/6 = √(32/9)/6.
        let hajek = ipw_mean_self_normalised(&logged).unwrap();
        assert!((hajek.mean - 1.0 / 3.0).abs() < 1e-15);
        assert!((hajek.standard_error - (32.0f64 / 9.0).sqrt() / 6.0).abs() < 1e-15);
        assert!((hajek.effective_sample_size - 36.0 / 20.0).abs() < 1e-12);
        assert_eq!((hajek.chosen, hajek.n), (2, 4));
    }

    #[test]
    fn equal_propensities_give_the_plain_mean() {
        let logged = [served(0.5, 0.2), served(0.5, 0.6), served(0.5, 0.7), NOT_SERVED];
        let hajek = ipw_mean_self_normalised(&logged).unwrap();
        assert!((hajek.mean - 0.5).abs() < 1e-15);
        assert!((hajek.effective_sample_size - 3.0).abs() < 1e-12);
    }

    #[test]
    fn invalid_logs_are_refused() {
        assert!(matches!(ipw_mean(&[NOT_SERVED, NOT_SERVED]), Err(StatsError::TooFewObservations { .. })));
        assert!(matches!(ipw_mean(&[served(0.0, 1.0), NOT_SERVED]), Err(StatsError::InvalidArgument(_))));
        assert!(matches!(ipw_mean(&[served(1.5, 1.0), NOT_SERVED]), Err(StatsError::InvalidArgument(_))));
    }

    #[test]
    fn weighting_removes_the_routers_confounding() {
        // Easy tasks (success 0.9) are routed to the model with probability 0.8, hard ones
        // (success 0.3) with 0.2; half the tasks are hard, so the model's true success rate
        // over all tasks is 0.6, while the naive rate of what it served is 0.78.
        let mut rng = SplitMix64::new(5);
        let (mut within_ht, mut within_sn) = (0, 0);
        for _ in 0..200 {
            let logged: Vec<Logged> = (0..2000)
                .map(|_| {
                    let hard = rng.unit() < 0.5;
                    let propensity = if hard { 0.2 } else { 0.8 };
                    let success = rng.unit() < if hard { 0.3 } else { 0.9 };
                    Logged { chosen: rng.unit() < propensity, propensity, outcome: f64::from(u8::from(success)) }
                })
                .collect();
            let ht = ipw_mean(&logged).unwrap();
            let sn = ipw_mean_self_normalised(&logged).unwrap();
            within_ht += usize::from((ht.mean - 0.6).abs() <= 1.96 * ht.standard_error);
            within_sn += usize::from((sn.mean - 0.6).abs() <= 1.96 * sn.standard_error);
        }
        // Both 95 % intervals should cover the truth ~190 times in 200 (seeded: fixed outcome).
        assert!(within_ht >= 176, "Horvitz–Thompson covered {within_ht}/200");
        assert!(within_sn >= 176, "self-normalised covered {within_sn}/200");
    }
}
