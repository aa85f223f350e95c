//! Agreement between annotators and small summary statistics for the dashboard.
//!
//! Agreement is Cohen's kappa over the queries two annotators answered (the `overlap` share): raw agreement
//! overstates how well people agree when one answer dominates (if both say "A" 90% of the time they agree 82%
//! of the time by chance), and kappa removes that chance agreement. With many annotators each pair is
//! (first answer, second answer) in the order they came in, so "rater 1" is whoever answered first; that
//! is the usual pooled reading of Cohen's kappa when the raters rotate.

use serde::Serialize;

/// Agreement on the queries answered twice. Categories: `Some(0)`, `Some(1)` (which completion, in the
/// store's order) and `None` (a tie).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Queries answered by two annotators.
    pub pairs: usize,
    /// Of those, answered the same way.
    pub agreed: usize,
    /// `agreed / pairs`.
    pub raw: Option<f64>,
    /// Cohen's kappa, (p_o − p_e) / (1 − p_e); `None` with no pairs, or when chance agreement is already 1
    /// (every answer in one category), where it is undefined.
    pub kappa: Option<f64>,
}

fn category(x: Option<usize>) -> usize {
    match x {
        Some(0) => 0,
        Some(_) => 1,
        None => 2,
    }
}

/// Cohen's kappa of (first answer, second answer) pairs.
pub fn cohen_kappa(pairs: &[(Option<usize>, Option<usize>)]) -> Agreement {
    let n = pairs.len();
    let agreed = pairs.iter().filter(|(a, b)| category(*a) == category(*b)).count();
    if n == 0 {
        return Agreement { pairs: 0, agreed: 0, raw: None, kappa: None };
    }
    let (mut first, mut second) = ([0usize; 3], [0usize; 3]);
    for (a, b) in pairs {
        first[category(*a)] += 1;
        second[category(*b)] += 1;
    }
    let nf = n as f64;
    let po = agreed as f64 / nf;
    let pe: f64 = (0..3).map(|k| (first[k] as f64 / nf) * (second[k] as f64 / nf)).sum();
    let kappa = (1.0 - pe > 1e-12).then(|| (po - pe) / (1.0 - pe));
    Agreement { pairs: n, agreed, raw: Some(po), kappa }
}

/// Median of `xs` (sorted in place); `None` when empty.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len() % 2 == 1 { xs[m] } else { (xs[m - 1] + xs[m]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<usize> = Some(0);
    const B: Option<usize> = Some(1);
    const T: Option<usize> = None;

    #[test]
    fn kappa_matches_a_hand_computed_value() {
        // rater 1: A A A A A B B B T T      marginals A .5, B .3, T .2
        // rater 2: A A A A B B B A T B      marginals A .5, B .4, T .1
        // agreed 7 of 10: p_o = .7; p_e = .5·.5 + .3·.4 + .2·.1 = .39; κ = (.7 − .39) / (1 − .39) = .31 / .61
        let pairs = [(A, A), (A, A), (A, A), (A, A), (A, B), (B, B), (B, B), (B, A), (T, T), (T, B)];
        let k = cohen_kappa(&pairs);
        assert_eq!((k.pairs, k.agreed), (10, 7));
        assert!((k.raw.unwrap() - 0.7).abs() < 1e-12);
        assert!((k.kappa.unwrap() - 0.31 / 0.61).abs() < 1e-12, "{k:?}");
        assert!((k.kappa.unwrap() - 0.508_196_721_3).abs() < 1e-9);
    }

    #[test]
    fn kappa_edge_cases() {
        assert_eq!(cohen_kappa(&[]).kappa, None);
        // Perfect agreement across categories: κ = 1.
        assert!((cohen_kappa(&[(A, A), (B, B)]).kappa.unwrap() - 1.0).abs() < 1e-12);
        // Everyone always says A: chance agreement is 1, κ undefined.
        assert_eq!(cohen_kappa(&[(A, A), (A, A)]).kappa, None);
        // Systematic disagreement: κ = −1 for two balanced categories.
        assert!((cohen_kappa(&[(A, B), (B, A)]).kappa.unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
