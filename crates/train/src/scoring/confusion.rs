//! Accuracy, per-class precision/recall/F1 and the confusion matrix.

use serde::{Deserialize, Serialize};

/// `counts[true][predicted]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

/// Precision, recall and F1 of one class against the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

impl Confusion {
    pub fn new(labels: &[String], truth: &[u32], predicted: &[u32]) -> Self {
        let n = labels.len();
        let mut counts = vec![vec![0; n]; n];
        for (&t, &p) in truth.iter().zip(predicted) {
            counts[t as usize][p as usize] += 1;
        }
        Self {
            labels: labels.to_vec(),
            counts,
        }
    }

    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: usize = (0..self.labels.len()).map(|i| self.counts[i][i]).sum();
        right as f64 / self.total().max(1) as f64
    }

    pub fn class(&self, c: usize) -> ClassMetrics {
        let tp = self.counts[c][c] as f64;
        let predicted: usize = self.counts.iter().map(|r| r[c]).sum();
        let support: usize = self.counts[c].iter().sum();
        let precision = if predicted == 0 {
            0.0
        } else {
            tp / predicted as f64
        };
        let recall = if support == 0 {
            0.0
        } else {
            tp / support as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        ClassMetrics {
            label: self.labels[c].clone(),
            precision,
            recall,
            f1,
            support,
        }
    }

    /// A plain-text table: rows are the true class, columns the predicted one.
    pub fn table(&self) -> String {
        let w = self
            .labels
            .iter()
            .map(|l| l.len())
            .chain([8])
            .max()
            .unwrap_or(8)
            + 2;
        let mut s = format!("{:<w$}", "true \\ pred");
        for l in &self.labels {
            s += &format!("{l:>w$}");
        }
        s.push('\n');
        for (i, l) in self.labels.iter().enumerate() {
            s += &format!("{l:<w$}");
            for c in &self.counts[i] {
                s += &format!("{c:>w$}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_a_hand_count() {
        let labels = vec!["ham".to_string(), "spam".to_string()];
        // 4 ham (1 called spam), 3 spam (1 called ham).
        let c = Confusion::new(&labels, &[0, 0, 0, 0, 1, 1, 1], &[0, 0, 0, 1, 1, 1, 0]);
        assert_eq!(c.counts, vec![vec![3, 1], vec![1, 2]]);
        assert!((c.accuracy() - 5.0 / 7.0).abs() < 1e-12);
        let s = c.class(1);
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.support, 3);
        assert!(c.table().contains("spam"));
    }
}
