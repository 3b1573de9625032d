//! `cairn train`: a data file in, a verified artifact and its manifest out (`<models>/<id>/`).
//!
//! Byte-reproducible: the same data file and options give the same `model.json` and
//! `manifest.json`, on any machine. The manifest's `trained_at` is the `--trained-at` option,
//! never the clock (a wall-clock time or a measured duration would change the bytes on every
//! run); without the option it is left out.

use crate::dataset::read_table;
use crate::multivariate::{average_precision, best_f1};
use crate::OfflineError;
use cairn_detect::multivariate::{Hyperparameters, MultivariateModel};
use cairn_detect::registry::{
    self, sha256_hex, EvaluationScores, LoadedModel, Manifest, ALGORITHM_PCA_KMEANS, MANIFEST_FILE,
};
use std::path::{Path, PathBuf};

/// The artifact's file name inside a model's folder.
pub const ARTIFACT_FILE: &str = "model.json";

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Training data (`.parquet` or `.csv`), unlabelled or labelled (labels are ignored).
    pub data: PathBuf,
    /// Labelled held-out data whose scores go into the manifest.
    pub eval: Option<PathBuf>,
    /// Model id: the folder name under `models_dir` and the first half of the model version.
    pub id: String,
    pub version: u32,
    pub models_dir: PathBuf,
    pub hyperparameters: Hyperparameters,
    /// RFC 3339; recorded as given.
    pub trained_at: Option<String>,
}

/// Trains, writes `<models_dir>/<id>/{model.json,manifest.json}`, reloads and verifies them.
pub fn train(opts: &TrainOptions) -> Result<LoadedModel, OfflineError> {
    if opts.id.is_empty() || !opts.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(OfflineError::Invalid(format!("model id {:?}: use letters, digits, '-' and '_'", opts.id)));
    }
    if let Some(t) = &opts.trained_at {
        chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| OfflineError::Invalid(format!("--trained-at {t:?} is not an RFC 3339 time: {e}")))?;
    }
    let data = read_table(&opts.data)?;
    let model = MultivariateModel::fit(data.features.clone(), data.rows.view(), opts.hyperparameters.clone())?;
    let evaluation = match &opts.eval {
        Some(path) => Some(evaluate(&model, path)?),
        None => None,
    };
    let artifact = to_json(&model);
    let manifest = Manifest {
        id: opts.id.clone(),
        version: opts.version,
        algorithm: ALGORITHM_PCA_KMEANS.into(),
        hyperparameters: opts.hyperparameters.clone(),
        features: data.features,
        training_data_sha256: data.sha256,
        training_rows: data.rows.nrows(),
        trained_at: opts.trained_at.clone(),
        evaluation,
        artifact: ARTIFACT_FILE.into(),
        artifact_sha256: sha256_hex(&artifact),
    };
    let dir = opts.models_dir.join(&opts.id);
    std::fs::create_dir_all(&dir).map_err(|source| OfflineError::Io { path: dir.clone(), source })?;
    write(&dir.join(ARTIFACT_FILE), &artifact)?;
    write(&dir.join(MANIFEST_FILE), &to_json(&manifest))?;
    Ok(registry::load_model(&dir)?)
}

fn evaluate(model: &MultivariateModel, path: &Path) -> Result<EvaluationScores, OfflineError> {
    let test = read_table(path)?;
    let labels = test
        .labels
        .ok_or_else(|| OfflineError::Data { path: path.into(), detail: "evaluation data needs a `label` column".into() })?;
    if test.features != model.features {
        return Err(OfflineError::Data {
            path: path.into(),
            detail: format!("features {:?} differ from the training data's {:?}", test.features, model.features),
        });
    }
    let scores = model.score_series(test.rows.view());
    Ok(EvaluationScores {
        data_sha256: test.sha256,
        rows: scores.len(),
        auc_pr: round6(average_precision(&scores, &labels)),
        best_f1: round6(best_f1(&scores, &labels)),
    })
}

/// Six decimals are what a reader needs; fewer digits keep the manifest readable.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("model types serialise");
    out.push(b'\n');
    out
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), OfflineError> {
    std::fs::write(path, bytes).map_err(|source| OfflineError::Io { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::host_metrics_csv;
    use cairn_detect::multivariate::synthetic::Break;

    /// The repository root (tests run in the crate's folder).
    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// How `datasets/host-metrics/` was made: 2000 clean minutes to train on, 1000 held-out minutes
    /// with four breaks of correlation.
    fn shipped_data() -> [(&'static str, String); 2] {
        let breaks = [
            Break { start: 200, len: 30, feature: 0 },
            Break { start: 450, len: 20, feature: 5 },
            Break { start: 700, len: 25, feature: 3 },
            Break { start: 880, len: 20, feature: 6 },
        ];
        [("train.csv", host_metrics_csv(2000, 1, &[])), ("test.csv", host_metrics_csv(1000, 2, &breaks))]
    }

    /// How `models/host-pca-kmeans/` was made (the same as the README's `cairn train` line).
    fn shipped_options(models_dir: PathBuf) -> TrainOptions {
        TrainOptions {
            data: repo().join("datasets/host-metrics/train.csv"),
            eval: Some(repo().join("datasets/host-metrics/test.csv")),
            id: "host-pca-kmeans".into(),
            version: 2,
            models_dir,
            hyperparameters: Hyperparameters { pca_components: 3, ..Hyperparameters::default() },
            trained_at: Some("2026-11-26T00:00:00Z".into()),
        }
    }

    #[test]
    fn shipped_host_metrics_are_regenerated_byte_for_byte() {
        let dir = repo().join("datasets/host-metrics");
        for (name, text) in shipped_data() {
            if std::env::var_os("CAIRN_WRITE_FIXTURES").is_some() {
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(dir.join(name), &text).expect("write");
            }
            let shipped = std::fs::read_to_string(dir.join(name)).expect("shipped data");
            assert!(shipped == text, "{name} differs from what the generator gives");
        }
    }

    #[test]
    fn shipped_models_are_what_training_on_the_shipped_data_gives() {
        if std::env::var_os("CAIRN_WRITE_FIXTURES").is_some() {
            train(&shipped_options(repo().join("models"))).expect("write shipped model");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let loaded = train(&shipped_options(tmp.path().into())).expect("train");
        for f in [ARTIFACT_FILE, MANIFEST_FILE] {
            let fresh = std::fs::read(tmp.path().join("host-pca-kmeans").join(f)).expect("fresh");
            let shipped = std::fs::read(repo().join("models/host-pca-kmeans").join(f)).expect("shipped");
            assert!(fresh == shipped, "models/host-pca-kmeans/{f} is not what retraining gives");
        }
        // The model is good at what it is for: the held-out breaks of correlation.
        let e = loaded.manifest.evaluation.expect("evaluated");
        assert!(e.auc_pr > 0.9 && e.best_f1 > 0.85, "{e:?}");
    }

    #[test]
    fn training_twice_gives_identical_bytes_and_the_manifest_names_the_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("train.csv");
        let text = host_metrics_csv(600, 9, &[]);
        std::fs::write(&data, &text).expect("write");
        let opts = |dir: &str| TrainOptions {
            data: data.clone(),
            eval: None,
            id: "t".into(),
            version: 3,
            models_dir: tmp.path().join(dir),
            hyperparameters: Hyperparameters::default(),
            trained_at: None,
        };
        let a = train(&opts("a")).expect("first");
        let b = train(&opts("b")).expect("second");
        for f in [ARTIFACT_FILE, MANIFEST_FILE] {
            let x = std::fs::read(tmp.path().join("a/t").join(f)).expect("a");
            let y = std::fs::read(tmp.path().join("b/t").join(f)).expect("b");
            assert!(x == y, "{f} differs between two trainings");
        }
        assert_eq!(a.manifest.training_data_sha256, sha256_hex(text.as_bytes()));
        assert_eq!(a.manifest.training_data_sha256, b.manifest.training_data_sha256);
        assert_eq!(a.manifest.training_rows, 600);
        assert_eq!(a.manifest.model_version(), "t/3");
        assert!(a.manifest.trained_at.is_none());
        let manifest = std::fs::read_to_string(tmp.path().join("a/t").join(MANIFEST_FILE)).expect("manifest");
        assert!(!manifest.contains("trained_at"), "no clock time may slip into the manifest");
    }

    #[test]
    fn bad_options_are_refused_before_any_file_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut o = shipped_options(tmp.path().into());
        o.trained_at = Some("yesterday".into());
        assert!(train(&o).unwrap_err().to_string().contains("RFC 3339"));
        o.trained_at = None;
        o.id = "../escape".into();
        assert!(train(&o).is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 0);
    }
}
