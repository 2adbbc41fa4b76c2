//! Deterministic random numbers for workloads and the fault suite: a seeded SplitMix64
//! generator and a Zipf sampler over account ranks. A seed must replay the same workload and
//! fault decisions on any machine and after any dependency upgrade, which `rand`'s `StdRng`
//! does not promise (its algorithm may change between releases); SplitMix64 is ten lines,
//! passes BigCrush and is fixed forever here.
//!
//! Zipf is sampled by inverting a precomputed CDF with a binary search: exact for any `s`, a
//! few hundred kilobytes for 100k ranks, and ~17 comparisons a draw — far below the cost of
//! the HTTP request it feeds.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny and fast; not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for one consumer (a client, the fault plan), so that how many
    /// numbers one consumer draws never shifts another's decisions.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mix = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is below 2^-40 for the small `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform duration in `lo_ms..=hi_ms` milliseconds.
    pub fn millis(&mut self, lo_ms: u64, hi_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.range(lo_ms, hi_ms))
    }
}

/// Zipf distribution over ranks 1..=n with exponent `s`: P(k) ∝ 1 / k^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_rank_one_gets_about_its_share() {
        // s = 1, n = 100k: P(1) = 1 / H(100000) ≈ 1 / 12.09 ≈ 0.0827.
        let z = Zipf::new(100_000, 1.0);
        let mut rng = Rng::new(7);
        let draws = 200_000;
        let mut ones = 0;
        let mut max = 0;
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=100_000).contains(&k));
            if k == 1 {
                ones += 1;
            }
            max = max.max(k);
        }
        let share = f64::from(ones) / f64::from(draws);
        assert!((0.075..0.09).contains(&share), "share of rank 1: {share}");
        assert!(max > 50_000, "the tail is reached: {max}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            assert!((5..=9).contains(&r.range(5, 9)));
        }
    }

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a: Vec<u64> = (0..5).map(|_| Rng(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        // First SplitMix64 output for seed 0, from the reference implementation.
        assert_eq!(Rng(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(7, 2).next_u64());
    }
}
