//! Packet loss models: independent (Bernoulli) and bursty (Gilbert-Elliott).

use rand::Rng;

/// How a link loses packets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// Nothing is lost.
    #[default]
    None,
    /// Each packet is lost with probability `p`, independently of the others.
    Independent {
        /// Loss probability, 0.0..=1.0.
        p: f64,
    },
    /// A two-state Gilbert-Elliott chain: in the *good* state a packet is lost with
    /// probability `loss_good`, in the *bad* state with `loss_bad`; before each packet the
    /// chain moves good → bad with probability `p_good_bad` and bad → good with `p_bad_good`.
    GilbertElliott {
        /// Probability of entering the bad state, per packet.
        p_good_bad: f64,
        /// Probability of leaving the bad state, per packet.
        p_bad_good: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl Loss {
    /// Independent loss with probability `p`.
    pub fn independent(p: f64) -> Self {
        Loss::Independent { p }
    }

    /// Bursty loss with the given long-run loss ratio and mean burst length (packets): a
    /// Gilbert chain that loses every packet in the bad state and none in the good one, so
    /// bursts last `mean_burst` packets on average and the bad state holds `ratio` of the
    /// time. `mean_burst` is at least 1.
    pub fn bursty(ratio: f64, mean_burst: f64) -> Self {
        let ratio = ratio.clamp(0.0, 0.999);
        let p_bad_good = 1.0 / mean_burst.max(1.0);
        Loss::GilbertElliott {
            p_good_bad: p_bad_good * ratio / (1.0 - ratio),
            p_bad_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The long-run fraction of packets this model loses.
    pub fn mean_ratio(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Independent { p } => p,
            Loss::GilbertElliott {
                p_good_bad,
                p_bad_good,
                loss_good,
                loss_bad,
            } => {
                let total = p_good_bad + p_bad_good;
                if total <= 0.0 {
                    return loss_good;
                }
                let bad = p_good_bad / total;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }

    /// Checks that every probability lies in 0.0..=1.0.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let check = |name: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(crate::Error::InvalidParameter {
                    name,
                    value: v.to_string(),
                    reason: "a probability lies in 0..=1",
                })
            }
        };
        match *self {
            Loss::None => Ok(()),
            Loss::Independent { p } => check("loss", p),
            Loss::GilbertElliott {
                p_good_bad,
                p_bad_good,
                loss_good,
                loss_bad,
            } => {
                check("p_good_bad", p_good_bad)?;
                check("p_bad_good", p_bad_good)?;
                check("loss_good", loss_good)?;
                check("loss_bad", loss_bad)
            }
        }
    }
}

/// The running state of a [`Loss`] model (the Gilbert-Elliott chain's current state).
#[derive(Debug, Clone, Default)]
pub(crate) struct LossState {
    bad: bool,
}

impl LossState {
    /// Decides the fate of the next packet: `true` if it is lost.
    pub(crate) fn lose(&mut self, model: &Loss, rng: &mut impl Rng) -> bool {
        match *model {
            Loss::None => false,
            Loss::Independent { p } => rng.random_bool(p),
            Loss::GilbertElliott {
                p_good_bad,
                p_bad_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad { p_bad_good } else { p_good_bad };
                if rng.random_bool(flip) {
                    self.bad = !self.bad;
                }
                rng.random_bool(if self.bad { loss_bad } else { loss_good })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Loss ratio and mean burst length over `n` packets.
    fn measure(model: Loss, n: usize, seed: u64) -> (f64, f64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = LossState::default();
        let (mut lost, mut bursts, mut in_burst) = (0usize, 0usize, false);
        for _ in 0..n {
            let l = state.lose(&model, &mut rng);
            if l {
                lost += 1;
                if !in_burst {
                    bursts += 1;
                }
            }
            in_burst = l;
        }
        let mean_burst = if bursts == 0 {
            0.0
        } else {
            lost as f64 / bursts as f64
        };
        (lost as f64 / n as f64, mean_burst)
    }

    #[test]
    fn independent_loss_matches_its_probability_and_has_short_bursts() {
        for seed in 0..5 {
            let (ratio, burst) = measure(Loss::independent(0.02), 200_000, seed);
            // 200 k Bernoulli(0.02) trials: standard deviation ~0.0003; ±0.002 is > 6 sigma.
            assert!((ratio - 0.02).abs() < 0.002, "seed {seed}: ratio {ratio}");
            // Runs of a 2 % event average 1/(1-0.02) ≈ 1.02 packets.
            assert!(burst < 1.1, "seed {seed}: mean burst {burst}");
        }
    }

    #[test]
    fn bursty_loss_keeps_its_ratio_with_long_bursts() {
        let model = Loss::bursty(0.05, 4.0);
        assert!((model.mean_ratio() - 0.05).abs() < 1e-9);
        for seed in 0..5 {
            let (ratio, burst) = measure(model, 400_000, seed);
            assert!((ratio - 0.05).abs() < 0.006, "seed {seed}: ratio {ratio}");
            assert!(
                (3.4..4.6).contains(&burst),
                "seed {seed}: mean burst {burst}"
            );
        }
    }

    #[test]
    fn no_loss_loses_nothing_and_bad_probabilities_are_refused() {
        assert_eq!(measure(Loss::None, 10_000, 1).0, 0.0);
        assert!(Loss::independent(1.5).validate().is_err());
        assert!(Loss::bursty(0.05, 3.0).validate().is_ok());
    }
}
