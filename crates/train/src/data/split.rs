//! Deterministic train/validation split by whole documents: held-out text is never seen in
//! training, not even as a neighbouring block.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::documents::{DataError, Document};

/// Documents for training and for validation.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Vec<Document>,
    pub validation: Vec<Document>,
}

/// Shuffles the documents with `seed` and holds out `validation_fraction` of them (at least one,
/// and at least one left for training).
pub fn split_documents(
    docs: Vec<Document>,
    validation_fraction: f64,
    seed: u64,
) -> Result<Split, DataError> {
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(DataError::Other(format!(
            "validation_fraction must be in [0, 1), got {validation_fraction}"
        )));
    }
    if validation_fraction > 0.0 && docs.len() < 2 {
        return Err(DataError::Other(format!(
            "a validation split needs at least 2 documents, found {} (split the text into several files)",
            docs.len()
        )));
    }
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_val = if validation_fraction == 0.0 {
        0
    } else {
        ((docs.len() as f64 * validation_fraction).round() as usize).clamp(1, docs.len() - 1)
    };
    let held: std::collections::BTreeSet<usize> = order[..n_val].iter().copied().collect();
    let (mut train, mut validation) = (vec![], vec![]);
    for (i, d) in docs.into_iter().enumerate() {
        if held.contains(&i) {
            validation.push(d);
        } else {
            train.push(d);
        }
    }
    Ok(Split { train, validation })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize) -> Vec<Document> {
        (0..n)
            .map(|i| Document {
                id: format!("d{i}"),
                text: format!("text {i}"),
                turns: None,
            })
            .collect()
    }

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let a = split_documents(docs(20), 0.1, 7).unwrap();
        let b = split_documents(docs(20), 0.1, 7).unwrap();
        assert_eq!(a.validation, b.validation);
        assert_eq!(a.validation.len(), 2);
        assert_eq!(a.train.len(), 18);
        let c = split_documents(docs(20), 0.1, 8).unwrap();
        assert_ne!(a.validation, c.validation);
        assert!(a.validation.iter().all(|v| !a.train.contains(v)));
        assert!(split_documents(docs(1), 0.1, 0)
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
        assert!(split_documents(docs(3), 1.0, 0).is_err());
        assert_eq!(split_documents(docs(3), 0.0, 0).unwrap().train.len(), 3);
    }
}
