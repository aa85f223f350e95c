//! Agreement between annotators and small summary statistics for the dashboard.
//!
//! Agreement is Cohen's kappa over the queries two annotators answered (the `overlap` share): raw agreement
//! overstates how well people agree when one answer dominates (if both say "A" 90% of the time they agree 82%
//! of the time by chance), and kappa removes that chance agreement. With many annotators each pair is
//! (first answer, second answer) in the order they came in, so "rater 1" is whoever answered first; that
//! is the usual pooled reading of Cohen's kappa when the raters rotate.
//!
//! Krippendorff's alpha (nominal) is reported beside it: it does not care who answered first, and it is the
//! figure annotation tools commonly report, so numbers can be compared with theirs.

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
    /// Krippendorff's alpha for nominal data over the same queries ([`krippendorff_alpha_nominal`]).
    pub alpha: Option<f64>,
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
        return Agreement { pairs: 0, agreed: 0, raw: None, kappa: None, alpha: None };
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
    let units: Vec<Vec<usize>> = pairs.iter().map(|(a, b)| vec![category(*a), category(*b)]).collect();
    Agreement { pairs: n, agreed, raw: Some(po), kappa, alpha: krippendorff_alpha_nominal(&units) }
}

/// Krippendorff's alpha for nominal categories (Krippendorff 2011, "Computing Krippendorff's
/// Alpha-Reliability"): `units[u]` holds the categories the raters of unit `u` gave; units with fewer than two
/// values are not pairable and are left out. With the coincidence matrix o_ck = Σ_u (pairs of values c, k in
/// u) / (m_u − 1), category totals n_c and n = Σ n_c,
/// α = 1 − (n − 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k.
/// `None` with fewer than two pairable values, or when every value is in one category (no disagreement is
/// expected, so alpha is undefined).
pub fn krippendorff_alpha_nominal(units: &[Vec<usize>]) -> Option<f64> {
    let k = units.iter().flatten().max().map_or(0, |&c| c + 1);
    let mut o = vec![vec![0.0f64; k]; k];
    for u in units.iter().filter(|u| u.len() >= 2) {
        let w = 1.0 / (u.len() - 1) as f64;
        for (i, &a) in u.iter().enumerate() {
            for (j, &b) in u.iter().enumerate() {
                if i != j {
                    o[a][b] += w;
                }
            }
        }
    }
    let totals: Vec<f64> = o.iter().map(|row| row.iter().sum()).collect();
    let n: f64 = totals.iter().sum();
    let observed: f64 =
        (0..k).flat_map(|c| (0..k).filter(move |&d| d != c).map(move |d| (c, d))).map(|(c, d)| o[c][d]).sum();
    let expected = n * n - totals.iter().map(|t| t * t).sum::<f64>();
    (n >= 2.0 && expected > 1e-12).then(|| 1.0 - (n - 1.0) * observed / expected)
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
        // Alpha over the same 20 answers: totals A 10, B 7, T 3; the coincidences off the diagonal are A–B
        // twice each way and T–B once each way, 6 in all; α = 1 − 19 · 6 / (20² − 10² − 7² − 3²) = 128/242
        // (the `krippendorff` Python package gives 0.5289256198347108 too).
        assert!((k.alpha.unwrap() - 128.0 / 242.0).abs() < 1e-12, "{k:?}");
    }

    #[test]
    fn alpha_matches_krippendorffs_worked_example() {
        // Krippendorff (2011), §A: 4 observers, 12 units, values 1–5, missing values; nominal α = 0.743
        // (the `krippendorff` Python package: 0.743421052631579).
        let rows: [[u8; 12]; 4] = [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, 0, 0, 0],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, 0, 3],
            [0, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 0],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, 0],
        ];
        let units: Vec<Vec<usize>> =
            (0..12).map(|u| rows.iter().map(|r| r[u] as usize).filter(|&v| v > 0).collect()).collect();
        let a = krippendorff_alpha_nominal(&units).unwrap();
        assert!((a - 0.743_421_052_631_579).abs() < 1e-12, "{a}");
        // Undefined without pairable values or without any variation.
        assert_eq!(krippendorff_alpha_nominal(&[vec![1], vec![2]]), None);
        assert_eq!(krippendorff_alpha_nominal(&[vec![1, 1], vec![1, 1, 1]]), None);
        assert_eq!(krippendorff_alpha_nominal(&[]), None);
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
