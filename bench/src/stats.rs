//! The statistics the benchmarks print, one implementation of each.
//!
//! Percentiles are nearest-rank on sorted values: index `round((n − 1) · p)`. The median is the
//! 50th percentile, so of an even count it is the upper of the middle two.

use std::cmp::Ordering;
use std::time::Duration;

/// A measured value that sorts totally (`f64` by IEEE total order, so a NaN cannot break a sort).
pub trait Sample: Copy {
    /// The order samples are sorted by.
    fn order(&self, other: &Self) -> Ordering;
}

impl Sample for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

impl Sample for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// The values, ascending.
pub fn sorted<T: Sample>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = values.into_iter().collect();
    v.sort_unstable_by(T::order);
    v
}

/// The `p`-quantile (`p` in 0..=1) of ascending values, nearest rank; `None` when there are none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * p.clamp(0.0, 1.0)).round() as usize).copied()
}

/// The median of values in any order; `None` when there are none.
pub fn median<T: Sample>(values: impl IntoIterator<Item = T>) -> Option<T> {
    percentile(&sorted(values), 0.5)
}

/// The median and the range of a set of runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary<T> {
    /// The median.
    pub median: T,
    /// The smallest value.
    pub min: T,
    /// The largest value.
    pub max: T,
}

/// Median, minimum and maximum of values in any order; `None` when there are none.
pub fn summary<T: Sample>(values: impl IntoIterator<Item = T>) -> Option<Summary<T>> {
    let v = sorted(values);
    Some(Summary { median: percentile(&v, 0.5)?, min: *v.first()?, max: *v.last()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_the_median_of_an_even_count_is_the_upper_middle() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(51.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        let ms = Duration::from_millis;
        assert_eq!(median([ms(9), ms(1), ms(5)]), Some(ms(5)));
    }

    #[test]
    fn no_values_give_no_figure() {
        assert_eq!(percentile::<f64>(&[], 0.5), None);
        assert_eq!(median(Vec::<Duration>::new()), None);
        assert_eq!(summary(Vec::<f64>::new()), None);
    }

    #[test]
    fn a_summary_gives_median_and_range_and_a_nan_does_not_scramble_the_order() {
        let s = summary([7.0, 2.0, 9.0, 4.0, 5.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (5.0, 2.0, 9.0));
        let v = sorted([3.0, f64::NAN, 1.0, 2.0]);
        assert_eq!(&v[..3], &[1.0, 2.0, 3.0]);
        assert!(v[3].is_nan());
    }
}
