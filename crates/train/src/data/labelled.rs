//! Labelled text for classification: a folder per class, JSONL (`text`, `label`) or CSV; plain
//! text or e-mail; a stratified, seeded train/validation/test split.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::documents::{natural_key, DataError};
use super::email::{email_text, EmailOptions, Undecodable};

/// Where labelled examples come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelledSource {
    /// One sub-folder per class; `classes` maps each folder name to its label (several
    /// folders may share a label). Every file matching `pattern` is one example.
    ClassFolders {
        path: PathBuf,
        classes: BTreeMap<String, String>,
        #[serde(default = "any_file")]
        pattern: String,
    },
    /// JSON lines with a text field and a label field (string or integer).
    Jsonl {
        path: PathBuf,
        #[serde(default = "text_field")]
        text_field: String,
        #[serde(default = "label_field")]
        label_field: String,
    },
    /// CSV with a header row naming the text and label columns.
    Csv {
        path: PathBuf,
        #[serde(default = "text_field")]
        text_column: String,
        #[serde(default = "label_field")]
        label_column: String,
        #[serde(default = "comma")]
        delimiter: char,
    },
}

impl LabelledSource {
    /// The file or folder the source reads.
    pub fn path(&self) -> &Path {
        match self {
            LabelledSource::ClassFolders { path, .. }
            | LabelledSource::Jsonl { path, .. }
            | LabelledSource::Csv { path, .. } => path,
        }
    }
}
fn any_file() -> String {
    "*".into()
}
fn text_field() -> String {
    "text".into()
}
fn label_field() -> String {
    "label".into()
}
fn comma() -> char {
    ','
}

/// How the raw bytes of an example become text.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// UTF-8 text as it is (invalid bytes replaced).
    #[default]
    Plain,
    /// RFC 822 messages: Subject and text parts, see [`EmailOptions`].
    Email,
}

/// `data:` of a classification run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelledDataConfig {
    pub source: LabelledSource,
    #[serde(default)]
    pub format: TextFormat,
    #[serde(default)]
    pub email: EmailOptions,
    /// Class names in class-index order (default: the labels found, sorted).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Tokens per example, [CLS] and [SEP] included; longer texts keep their head.
    #[serde(default = "d_max_len")]
    pub max_length: usize,
    /// Share of each class held out for validation.
    #[serde(default = "d_tenth")]
    pub validation_fraction: f64,
    /// Share of each class held out for the final test.
    #[serde(default = "d_tenth")]
    pub test_fraction: f64,
    /// Seed of the split.
    #[serde(default)]
    pub seed: u64,
    /// Keep at most this many examples per class (taken by the seed), for quick runs.
    #[serde(default)]
    pub max_per_class: Option<usize>,
}
fn d_max_len() -> usize {
    128
}
fn d_tenth() -> f64 {
    0.1
}

impl LabelledDataConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let err = |key: &str, msg: String| crate::config::ConfigError {
            key: format!("data.{key}"),
            msg,
        };
        if self.max_length < 3 {
            return Err(err(
                "max_length",
                format!(
                    "must be at least 3 ([CLS], a token, [SEP]), got {}",
                    self.max_length
                ),
            ));
        }
        for (k, v) in [
            ("validation_fraction", self.validation_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(err(k, format!("must be in [0, 1), got {v}")));
            }
        }
        if self.validation_fraction + self.test_fraction >= 1.0 {
            return Err(err(
                "test_fraction",
                "validation_fraction + test_fraction leaves nothing to train on".into(),
            ));
        }
        if self.max_per_class == Some(0) {
            return Err(err("max_per_class", "must be positive".into()));
        }
        if let LabelledSource::ClassFolders { classes, .. } = &self.source {
            if classes.is_empty() {
                return Err(err("source.classes", "maps no folder to a label".into()));
            }
        }
        if let Some(labels) = &self.labels {
            let unique: BTreeSet<&String> = labels.iter().collect();
            if labels.len() < 2 || unique.len() != labels.len() {
                return Err(err(
                    "labels",
                    format!("needs at least 2 distinct class names, got {labels:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// One labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Where it came from (`file` or `file:line`).
    pub id: String,
    pub text: String,
    /// Class index into [`LabelledSet::labels`].
    pub label: usize,
}

/// An input that gave no example, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// Everything read from a labelled source.
#[derive(Clone, Debug)]
pub struct LabelledSet {
    pub labels: Vec<String>,
    pub examples: Vec<Example>,
    /// Inputs that could not be decoded (reported, never silently dropped).
    pub skipped: Vec<Skipped>,
    /// Examples decoded with a charset no decoder knows (kept, replacement characters).
    pub unknown_charset: Vec<String>,
}

impl LabelledSet {
    /// Examples per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.labels.len()];
        for e in &self.examples {
            c[e.label] += 1;
        }
        c
    }
}

fn file_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// An example as read: where it is, its bytes and its label's name.
type Raw = (String, Vec<u8>, String);

/// Reads every example of `cfg.source`, decodes it per `cfg.format` and maps labels to class
/// indices. A label the config does not know, a missing or empty class folder, or no examples
/// at all is an error naming where; an undecodable input is recorded in `skipped`.
pub fn load_labelled(cfg: &LabelledDataConfig) -> Result<LabelledSet, DataError> {
    let raw = match &cfg.source {
        LabelledSource::ClassFolders {
            path,
            classes,
            pattern,
        } => read_class_folders(path, classes, pattern)?,
        LabelledSource::Jsonl {
            path,
            text_field,
            label_field,
        } => read_jsonl(path, text_field, label_field)?,
        LabelledSource::Csv {
            path,
            text_column,
            label_column,
            delimiter,
        } => read_csv(path, text_column, label_column, *delimiter)?,
    };
    let labels = match &cfg.labels {
        Some(l) => l.clone(),
        None => raw
            .iter()
            .map(|(_, _, l)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let set = decode(cfg, raw, labels)?;
    for (i, n) in set.class_counts().iter().enumerate() {
        if *n == 0 {
            return Err(DataError::Other(format!(
                "class `{}` has no usable examples",
                set.labels[i]
            )));
        }
    }
    Ok(set)
}

/// Every file matching `pattern` in each class folder under `path`, in natural order.
fn read_class_folders(
    path: &Path,
    classes: &BTreeMap<String, String>,
    pattern: &str,
) -> Result<Vec<Raw>, DataError> {
    if !path.is_dir() {
        return Err(file_err(path, "not a folder"));
    }
    let mut raw = vec![];
    for (folder, label) in classes {
        let dir = path.join(folder);
        if !dir.is_dir() {
            return Err(file_err(
                &dir,
                format!("class folder `{folder}` (label `{label}`) does not exist"),
            ));
        }
        let mut files: Vec<PathBuf> = glob::glob(&dir.join(pattern).to_string_lossy())
            .map_err(|e| DataError::Other(format!("data pattern `{pattern}`: {e}")))?
            .filter_map(|r| r.ok())
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            return Err(file_err(
                &dir,
                format!("class folder `{folder}` has no file matching `{pattern}`"),
            ));
        }
        files.sort_by_key(|p| natural_key(p));
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| file_err(&f, e.to_string()))?;
            raw.push((f.display().to_string(), bytes, label.clone()));
        }
    }
    Ok(raw)
}

/// One example per non-empty line of a JSONL file: its `text_field` and `label_field`.
fn read_jsonl(path: &Path, text_field: &str, label_field: &str) -> Result<Vec<Raw>, DataError> {
    super::documents::check_regular(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut raw = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_err = |msg: String| DataError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| line_err(format!("not JSON: {e}")))?;
        let t = v
            .get(text_field)
            .and_then(|t| t.as_str())
            .ok_or_else(|| line_err(format!("no string field `{text_field}`")))?;
        let l = match v.get(label_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Bool(b)) => b.to_string(),
            _ => {
                return Err(line_err(format!(
                    "no string or number field `{label_field}`"
                )))
            }
        };
        raw.push((
            format!("{}:{}", path.display(), i + 1),
            t.as_bytes().to_vec(),
            l,
        ));
    }
    Ok(raw)
}

/// One example per row of a CSV file with a header naming its text and label columns.
fn read_csv(
    path: &Path,
    text_column: &str,
    label_column: &str,
    delimiter: char,
) -> Result<Vec<Raw>, DataError> {
    super::documents::check_regular(path)?;
    let mut rd = csv::ReaderBuilder::new()
        .delimiter(u8::try_from(delimiter).map_err(|_| {
            DataError::Other(format!("data.source.delimiter `{delimiter}` is not ASCII"))
        })?)
        .from_path(path)
        .map_err(|e| file_err(path, e.to_string()))?;
    let headers = rd
        .headers()
        .map_err(|e| file_err(path, e.to_string()))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            file_err(
                path,
                format!(
                    "no column `{name}` in the header row ({})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (tc, lc) = (col(text_column)?, col(label_column)?);
    let mut raw = vec![];
    for (i, rec) in rd.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line,
            msg: e.to_string(),
        })?;
        let (Some(t), Some(l)) = (rec.get(tc), rec.get(lc)) else {
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line,
                msg: "row is shorter than the header".into(),
            });
        };
        raw.push((
            format!("{}:{line}", path.display()),
            t.as_bytes().to_vec(),
            l.to_string(),
        ));
    }
    Ok(raw)
}

/// Decodes every raw example per `cfg.format` under `labels`; an unknown label is an error,
/// an undecodable input is recorded in `skipped`.
fn decode(
    cfg: &LabelledDataConfig,
    raw: Vec<Raw>,
    labels: Vec<String>,
) -> Result<LabelledSet, DataError> {
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut examples = Vec::with_capacity(raw.len());
    let mut skipped = vec![];
    let mut unknown_charset = vec![];
    for (id, bytes, label) in raw {
        let Some(&label) = index.get(label.as_str()) else {
            return Err(DataError::Other(format!(
                "{id}: label `{label}` is not one of data.labels ({})",
                labels.join(", ")
            )));
        };
        let text = match cfg.format {
            TextFormat::Plain => plain_text(&bytes),
            TextFormat::Email => email_text(&bytes, &cfg.email).map(|t| {
                if !t.unknown_charsets.is_empty() {
                    unknown_charset.push(id.clone());
                }
                t.text
            }),
        };
        match text {
            Ok(text) => examples.push(Example { id, text, label }),
            Err(why) => skipped.push(Skipped {
                id,
                reason: why.to_string(),
            }),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(
            skipped = skipped.len(),
            first = %skipped[0].id,
            reason = %skipped[0].reason,
            "inputs that could not be decoded were left out (listed in the run's data report)"
        );
    }
    Ok(LabelledSet {
        labels,
        examples,
        skipped,
        unknown_charset,
    })
}

/// A plain-text example: binary content or no text is undecodable.
fn plain_text(bytes: &[u8]) -> Result<String, Undecodable> {
    if bytes.contains(&0) {
        return Err(Undecodable::Binary);
    }
    let t = String::from_utf8_lossy(bytes).into_owned();
    if t.trim().is_empty() {
        Err(Undecodable::NoText)
    } else {
        Ok(t)
    }
}

/// Example indices of each part of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelledSplit {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// Stratified split: each class is shuffled with `seed` and cut by the fractions (at least one
/// example per non-empty fraction and class when the class has enough). `max_per_class` first
/// keeps a seeded sample of each class.
pub fn split_stratified(
    set: &LabelledSet,
    validation_fraction: f64,
    test_fraction: f64,
    seed: u64,
    max_per_class: Option<usize>,
) -> LabelledSplit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = LabelledSplit {
        train: vec![],
        validation: vec![],
        test: vec![],
    };
    for class in 0..set.labels.len() {
        let mut idx: Vec<usize> = (0..set.examples.len())
            .filter(|&i| set.examples[i].label == class)
            .collect();
        idx.shuffle(&mut rng);
        if let Some(m) = max_per_class {
            idx.truncate(m);
        }
        let n = idx.len();
        let take = |f: f64| {
            if f == 0.0 || n < 3 {
                0
            } else {
                ((n as f64 * f).round() as usize).max(1)
            }
        };
        let n_test = take(test_fraction);
        let n_val = take(validation_fraction).min(n.saturating_sub(n_test + 1));
        split.test.extend_from_slice(&idx[..n_test]);
        split
            .validation
            .extend_from_slice(&idx[n_test..n_test + n_val]);
        split.train.extend_from_slice(&idx[n_test + n_val..]);
    }
    for part in [&mut split.train, &mut split.validation, &mut split.test] {
        part.sort_unstable();
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(source: LabelledSource) -> LabelledDataConfig {
        LabelledDataConfig {
            source,
            format: TextFormat::Plain,
            email: EmailOptions::default(),
            labels: None,
            max_length: 64,
            validation_fraction: 0.1,
            test_fraction: 0.1,
            seed: 0,
            max_per_class: None,
        }
    }

    fn folders(dir: &Path) -> LabelledSource {
        LabelledSource::ClassFolders {
            path: dir.to_path_buf(),
            classes: [("good", "ham"), ("bad", "spam"), ("bad2", "spam")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            pattern: "*".into(),
        }
    }

    fn write(dir: &Path, folder: &str, n: usize, body: &str) {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        for i in 0..n {
            std::fs::write(
                dir.join(folder).join(format!("{i}.txt")),
                format!("{body} {i}"),
            )
            .unwrap();
        }
    }

    #[test]
    fn class_folders_map_to_labels_and_split_is_stratified_and_seeded() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "good", 40, "hello");
        write(d.path(), "bad", 15, "buy");
        write(d.path(), "bad2", 5, "cheap");
        let c = cfg(folders(d.path()));
        let set = load_labelled(&c).unwrap();
        assert_eq!(set.labels, vec!["ham", "spam"]);
        assert_eq!(set.class_counts(), vec![40, 20]);
        let s = split_stratified(&set, 0.1, 0.1, 7, None);
        let count = |v: &[usize], class| {
            v.iter()
                .filter(|&&i| set.examples[i].label == class)
                .count()
        };
        assert_eq!((count(&s.test, 0), count(&s.test, 1)), (4, 2));
        assert_eq!((count(&s.validation, 0), count(&s.validation, 1)), (4, 2));
        assert_eq!(s.train.len() + s.validation.len() + s.test.len(), 60);
        let all: BTreeSet<usize> = s
            .train
            .iter()
            .chain(&s.validation)
            .chain(&s.test)
            .copied()
            .collect();
        assert_eq!(all.len(), 60, "parts overlap");
        assert_eq!(s, split_stratified(&set, 0.1, 0.1, 7, None));
        assert_ne!(s, split_stratified(&set, 0.1, 0.1, 8, None));
        let small = split_stratified(&set, 0.1, 0.1, 7, Some(10));
        assert_eq!(
            small.train.len() + small.validation.len() + small.test.len(),
            20
        );
    }

    #[test]
    fn bad_class_folders_and_labels_are_named() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "good", 3, "hello");
        write(d.path(), "bad", 3, "buy");
        let e = load_labelled(&cfg(folders(d.path())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad2") && e.contains("does not exist"), "{e}");
        std::fs::create_dir_all(d.path().join("bad2")).unwrap();
        let e = load_labelled(&cfg(folders(d.path())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad2") && e.contains("no file"), "{e}");
        write(d.path(), "bad2", 2, "x");
        let mut c = cfg(folders(d.path()));
        c.labels = Some(vec!["ham".into(), "junk".into()]);
        let e = load_labelled(&c).unwrap_err().to_string();
        assert!(e.contains("`spam`") && e.contains("data.labels"), "{e}");
    }

    #[test]
    fn binary_files_are_skipped_and_reported() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "good", 3, "From: a@b.c\nSubject: hi\n\nhello");
        write(d.path(), "bad", 3, "From: a@b.c\nSubject: buy\n\ncheap");
        write(d.path(), "bad2", 1, "From: a@b.c\nSubject: buy\n\ncheap");
        std::fs::write(d.path().join("bad2/blob.bin"), [0x7fu8, b'E', 0, 0, 1, 2]).unwrap();
        std::fs::write(
            d.path().join("good/noise.txt"),
            "just some words, no headers",
        )
        .unwrap();
        let mut c = cfg(folders(d.path()));
        c.format = TextFormat::Email;
        let set = load_labelled(&c).unwrap();
        assert_eq!(set.examples.len(), 7);
        assert_eq!(set.skipped.len(), 2, "{:?}", set.skipped);
        assert!(set
            .skipped
            .iter()
            .any(|s| s.id.ends_with("blob.bin") && s.reason.contains("binary")));
        assert!(set.examples.iter().all(|e| e.text.starts_with("Subject: ")));
    }

    #[test]
    fn jsonl_and_csv_sources() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("a.jsonl");
        std::fs::write(
            &j,
            "{\"text\":\"good day\",\"label\":0}\n\n{\"text\":\"buy now\",\"label\":1}\n",
        )
        .unwrap();
        let set = load_labelled(&cfg(LabelledSource::Jsonl {
            path: j.clone(),
            text_field: "text".into(),
            label_field: "label".into(),
        }))
        .unwrap();
        assert_eq!(set.labels, vec!["0", "1"]);
        assert_eq!(set.examples[1].text, "buy now");
        assert_eq!(set.examples[1].id, format!("{}:3", j.display()));
        std::fs::write(&j, "{\"text\":\"good day\"}\n").unwrap();
        let e = load_labelled(&cfg(LabelledSource::Jsonl {
            path: j.clone(),
            text_field: "text".into(),
            label_field: "label".into(),
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains(":1:") && e.contains("label"), "{e}");

        let c = d.path().join("a.csv");
        std::fs::write(
            &c,
            "id,body,class\n1,\"hello, friend\",ham\n2,win cash,spam\n",
        )
        .unwrap();
        let src = |col: &str| LabelledSource::Csv {
            path: c.clone(),
            text_column: col.into(),
            label_column: "class".into(),
            delimiter: ',',
        };
        let set = load_labelled(&cfg(src("body"))).unwrap();
        assert_eq!(set.examples[0].text, "hello, friend");
        assert_eq!(set.labels, vec!["ham", "spam"]);
        let e = load_labelled(&cfg(src("text"))).unwrap_err().to_string();
        assert!(e.contains("no column `text`") && e.contains("body"), "{e}");
    }
}
