//! The model registry: trained artifacts with their manifests, as `models/` holds them.
//!
//! Layout: one folder per model, `models/<id>/manifest.json` and the artifact it names (e.g.
//! `models/<id>/model.json`). The manifest records what the model is (id, version, algorithm,
//! hyperparameters, features), what it was trained on (SHA-256 of the training data, rows), when
//! (`trained_at`, taken from the trainer's `--trained-at` option, never from the clock, so that
//! retraining on the same data gives the same bytes), how it scored on held-out data, and the
//! SHA-256 of the artifact bytes. Loading checks that hash and the model's consistency before a
//! model is used; a mismatch is an error, never a silent fallback.
//!
//! The default artifacts shipped in `models/` are compiled into the binary ([`default_models`]),
//! so `serve` and `demo` have them wherever the binary runs.
//!
//! No polars here: training lives in `cairn-offline`.

use crate::multivariate::{Hyperparameters, MultivariateError, MultivariateModel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The manifest's file name inside a model's folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The only algorithm this registry knows so far.
pub const ALGORITHM_PCA_KMEANS: &str = "standard-scaler+pca+kmeans";

/// Held-out evaluation of a model, recorded in its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationScores {
    /// SHA-256 of the labelled evaluation data file.
    pub data_sha256: String,
    pub rows: usize,
    /// Area under the precision-recall curve of the combined score, point-wise labels.
    pub auc_pr: f64,
    /// Best point-wise F1 over all thresholds (never point-adjusted).
    pub best_f1: f64,
}

/// What `models/<id>/manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: u32,
    pub algorithm: String,
    pub hyperparameters: Hyperparameters,
    pub features: Vec<String>,
    /// SHA-256 (hex) of the training data file's bytes.
    pub training_data_sha256: String,
    pub training_rows: usize,
    /// RFC 3339 time given to the trainer (`--trained-at`); absent when none was given. Never the
    /// wall clock, so that training is byte-reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationScores>,
    /// The artifact's file name, beside the manifest.
    pub artifact: String,
    /// SHA-256 (hex) of the artifact's bytes.
    pub artifact_sha256: String,
}

impl Manifest {
    /// The version string recorded on every anomaly this model produces: `id/version`.
    pub fn model_version(&self) -> String {
        format!("{}/{}", self.id, self.version)
    }
}

/// A verified model, ready to score.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub manifest: Manifest,
    pub model: Arc<MultivariateModel>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what} of model {model:?} is not valid JSON: {source}")]
    Json { model: String, what: &'static str, source: serde_json::Error },
    #[error("artifact of model {model:?} has SHA-256 {actual}, but its manifest says {expected}: the file was changed or belongs to another manifest; retrain with `cairn train`")]
    HashMismatch { model: String, expected: String, actual: String },
    #[error("model {model:?}: {detail}")]
    Mismatch { model: String, detail: String },
    #[error("model {model:?} uses algorithm {algorithm:?}, which this build does not know")]
    UnknownAlgorithm { model: String, algorithm: String },
    #[error("model {model:?} is inconsistent: {source}")]
    Invalid { model: String, source: MultivariateError },
    #[error("artifact name {0:?} must be a plain file name beside the manifest")]
    BadArtifactName(String),
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a manifest against its artifact's bytes and parses the model.
pub fn verify(manifest: Manifest, artifact: &[u8]) -> Result<LoadedModel, RegistryError> {
    let name = manifest.id.clone();
    let actual = sha256_hex(artifact);
    if actual != manifest.artifact_sha256 {
        return Err(RegistryError::HashMismatch { model: name, expected: manifest.artifact_sha256, actual });
    }
    if manifest.algorithm != ALGORITHM_PCA_KMEANS {
        return Err(RegistryError::UnknownAlgorithm { model: name, algorithm: manifest.algorithm });
    }
    let model: MultivariateModel = serde_json::from_slice(artifact)
        .map_err(|source| RegistryError::Json { model: name.clone(), what: "artifact", source })?;
    model.validate().map_err(|source| RegistryError::Invalid { model: name.clone(), source })?;
    if model.features != manifest.features {
        return Err(RegistryError::Mismatch { model: name, detail: "the artifact's features differ from the manifest's".into() });
    }
    if model.hyperparameters != manifest.hyperparameters {
        return Err(RegistryError::Mismatch {
            model: name,
            detail: "the artifact's hyperparameters differ from the manifest's".into(),
        });
    }
    Ok(LoadedModel { manifest, model: Arc::new(model) })
}

/// Loads and verifies one model folder (`dir/manifest.json` and its artifact).
pub fn load_model(dir: &Path) -> Result<LoadedModel, RegistryError> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|source| RegistryError::Io { path: p, source });
    let manifest_bytes = read(dir.join(MANIFEST_FILE))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|source| RegistryError::Json {
        model: dir.display().to_string(),
        what: "manifest",
        source,
    })?;
    let artifact = Path::new(&manifest.artifact);
    if artifact.components().count() != 1 || artifact.file_name().is_none() {
        return Err(RegistryError::BadArtifactName(manifest.artifact));
    }
    let bytes = read(dir.join(artifact))?;
    verify(manifest, &bytes)
}

/// Loads every model folder under `root` (each subfolder with a manifest), sorted by id.
pub fn load_dir(root: &Path) -> Result<Vec<LoadedModel>, RegistryError> {
    let entries = std::fs::read_dir(root).map_err(|source| RegistryError::Io { path: root.into(), source })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort();
    let mut out = dirs.iter().map(|d| load_model(d)).collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
    Ok(out)
}

/// The artifacts shipped in the repository's `models/`, compiled in: (folder, manifest, artifact).
const DEFAULT_MODELS: &[(&str, &[u8], &[u8])] = &[(
    "host-pca-kmeans",
    include_bytes!("../../../models/host-pca-kmeans/manifest.json"),
    include_bytes!("../../../models/host-pca-kmeans/model.json"),
)];

/// The default models, verified like any other (a build from a tampered `models/` fails here).
pub fn default_models() -> Result<Vec<LoadedModel>, RegistryError> {
    DEFAULT_MODELS
        .iter()
        .map(|(name, manifest, artifact)| {
            let manifest: Manifest = serde_json::from_slice(manifest).map_err(|source| RegistryError::Json {
                model: (*name).to_string(),
                what: "manifest",
                source,
            })?;
            verify(manifest, artifact)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multivariate::synthetic::{host_rows, HOST_FEATURES};
    use ndarray::Array2;

    fn artifact() -> (Manifest, Vec<u8>) {
        let (rows, _) = host_rows(400, 4, &[]);
        let m = Array2::from_shape_fn((rows.len(), 8), |(i, j)| rows[i][j]);
        let features: Vec<String> = HOST_FEATURES.iter().map(|s| s.to_string()).collect();
        let hp = Hyperparameters { kmeans_runs: 1, ..Default::default() };
        let model = MultivariateModel::fit(features.clone(), m.view(), hp.clone()).expect("fit");
        let bytes = serde_json::to_vec_pretty(&model).expect("json");
        let manifest = Manifest {
            id: "host".into(),
            version: 2,
            algorithm: ALGORITHM_PCA_KMEANS.into(),
            hyperparameters: hp,
            features,
            training_data_sha256: "00".into(),
            training_rows: 400,
            trained_at: None,
            evaluation: None,
            artifact: "model.json".into(),
            artifact_sha256: sha256_hex(&bytes),
        };
        (manifest, bytes)
    }

    fn write(dir: &Path, manifest: &Manifest, bytes: &[u8]) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(manifest).expect("json")).expect("write");
        std::fs::write(dir.join(&manifest.artifact), bytes).expect("write");
    }

    #[test]
    fn the_shipped_default_models_verify() {
        let defaults = default_models().expect("defaults");
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0].manifest.model_version(), "host-pca-kmeans/2");
        assert_eq!(defaults[0].model.features, HOST_FEATURES);
    }

    #[test]
    fn a_verified_artifact_loads_and_names_its_version() {
        let (manifest, bytes) = artifact();
        let loaded = verify(manifest, &bytes).expect("verify");
        assert_eq!(loaded.manifest.model_version(), "host/2");
        assert_eq!(loaded.model.dimension(), 8);
    }

    #[test]
    fn a_changed_artifact_is_refused() {
        let (manifest, mut bytes) = artifact();
        // Change one digit of one number: still valid JSON, still a model, but not the trained one.
        let pos = bytes.iter().position(|b| b.is_ascii_digit() && *b != b'9').expect("a digit");
        bytes[pos] += 1;
        let e = verify(manifest, &bytes).unwrap_err();
        assert!(matches!(e, RegistryError::HashMismatch { .. }), "{e}");
    }

    #[test]
    fn a_manifest_that_does_not_describe_its_artifact_is_refused() {
        let (mut manifest, bytes) = artifact();
        manifest.features[0] = "something_else".into();
        assert!(matches!(verify(manifest.clone(), &bytes), Err(RegistryError::Mismatch { .. })));
        let (mut manifest, _) = artifact();
        manifest.algorithm = "isolation-forest".into();
        assert!(matches!(verify(manifest, &bytes), Err(RegistryError::UnknownAlgorithm { .. })));
        // A consistent hash over a broken model is still refused.
        let (mut manifest, _) = artifact();
        let broken = br#"{"features":["a"]}"#;
        manifest.artifact_sha256 = sha256_hex(broken);
        assert!(matches!(verify(manifest, broken), Err(RegistryError::Json { .. })));
    }

    #[test]
    fn load_dir_reads_every_model_folder_and_refuses_escaping_artifact_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path();
        let (manifest, bytes) = artifact();
        write(&tmp.join("b"), &Manifest { id: "b".into(), ..manifest.clone() }, &bytes);
        write(&tmp.join("a"), &Manifest { id: "a".into(), ..manifest.clone() }, &bytes);
        std::fs::create_dir_all(tmp.join("not-a-model")).expect("mkdir");
        let all = load_dir(tmp).expect("load");
        assert_eq!(all.iter().map(|m| m.manifest.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let evil = Manifest { artifact: "../a/model.json".into(), ..manifest };
        std::fs::write(tmp.join("b").join(MANIFEST_FILE), serde_json::to_vec(&evil).expect("json")).expect("write");
        assert!(matches!(load_dir(tmp), Err(RegistryError::BadArtifactName(_))));
    }
}
