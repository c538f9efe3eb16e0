//! Deterministic pseudo-random numbers: a value per (seed, stream, index), so a signal's
//! sample `n` is the same however the simulation is polled.

/// SplitMix64 finaliser: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) for (seed, stream, index).
pub(crate) fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    let h = mix(seed ^ mix(stream.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ mix(index)));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A value in (-1, 1), roughly bell-shaped (sum of two uniforms), for (seed, stream, index).
pub(crate) fn symmetric(seed: u64, stream: u64, index: u64) -> f64 {
    uniform(seed, stream, index.wrapping_mul(2)) + uniform(seed, stream, index.wrapping_mul(2) + 1)
        - 1.0
}

/// A sequential generator for values drawn in a fixed order (readings of one device).
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    seed: u64,
    stream: u64,
    next: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Rng {
            seed,
            stream,
            next: 0,
        }
    }

    /// The next value in (-1, 1).
    pub(crate) fn symmetric(&mut self) -> f64 {
        self.next += 1;
        symmetric(self.seed, self.stream, self.next)
    }

    /// The next value in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        self.next += 1;
        uniform(self.seed, self.stream, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_spread() {
        assert_eq!(uniform(1, 2, 3), uniform(1, 2, 3));
        assert_ne!(uniform(1, 2, 3), uniform(2, 2, 3));
        let mean: f64 = (0..10_000).map(|i| uniform(7, 0, i)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!((0..10_000).all(|i| symmetric(7, 1, i).abs() < 1.0));
    }
}
