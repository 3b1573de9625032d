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
    let scores: Vec<f64> = model.score_rows(test.rows.view()).iter().map(|s| s.combined).collect();
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
