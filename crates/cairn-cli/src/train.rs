//! `cairn train`: fit a multivariate model on a data file and write it, with its manifest, into
//! the model registry folder. The work is `cairn_offline::train`; this file is arguments and output.

use anyhow::{Context, Result};
use cairn_detect::multivariate::Hyperparameters;
use cairn_offline::train::{train, TrainOptions};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: `.parquet` or `.csv` (header row; `t`/`timestamp` and `label` columns are
    /// not features).
    #[arg(long)]
    data: PathBuf,
    /// Labelled held-out data; its AUC-PR and best F1 go into the manifest.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Model id (the folder under --models-dir).
    #[arg(long)]
    id: String,
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// The registry folder.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Recorded as the manifest's `trained_at` (RFC 3339). Not taken from the clock, so that the
    /// same data and options give the same bytes; left out when not given.
    #[arg(long)]
    trained_at: Option<String>,
    #[arg(long, default_value_t = Hyperparameters::default().pca_components)]
    pca_components: usize,
    #[arg(long, default_value_t = Hyperparameters::default().kmeans_clusters)]
    kmeans_clusters: usize,
    #[arg(long, default_value_t = Hyperparameters::default().kmeans_runs)]
    kmeans_runs: usize,
    #[arg(long, default_value_t = Hyperparameters::default().calibration_quantile)]
    calibration_quantile: f64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let opts = TrainOptions {
        data: args.data,
        eval: args.eval,
        id: args.id,
        version: args.version,
        models_dir: args.models_dir,
        hyperparameters: Hyperparameters {
            pca_components: args.pca_components,
            kmeans_clusters: args.kmeans_clusters,
            kmeans_runs: args.kmeans_runs,
            calibration_quantile: args.calibration_quantile,
            ..Hyperparameters::default()
        },
        trained_at: args.trained_at,
    };
    let loaded = train(&opts).with_context(|| format!("training {:?} from {}", opts.id, opts.data.display()))?;
    let m = &loaded.manifest;
    println!(
        "wrote {} ({} features, {} training rows, artifact sha256 {})",
        opts.models_dir.join(&m.id).display(),
        m.features.len(),
        m.training_rows,
        &m.artifact_sha256[..16]
    );
    if let Some(e) = &m.evaluation {
        println!("held-out: AUC-PR {:.3}, best point-wise F1 {:.3} over {} rows", e.auc_pr, e.best_f1, e.rows);
    }
    Ok(())
}
