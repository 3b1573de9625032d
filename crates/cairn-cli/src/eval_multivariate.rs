//! `cairn eval multivariate --data DIR`: fit on each machine's train file, score its test file,
//! print AUC-PR and best point-wise F1 per machine and overall (never point-adjusted F1). The
//! work is `cairn_offline::multivariate`; this file is arguments, progress and output.

use crate::OutputFormat;
use anyhow::{Context, Result};
use cairn_detect::multivariate::Hyperparameters;
use cairn_offline::multivariate::{evaluate_pairs, find_pairs, MachineResult, Report};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct MultivariateArgs {
    /// Folder searched for `<name>_train.parquet` / `<name>_test.parquet` pairs (CSV works too).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = Hyperparameters::default().pca_components)]
    pca_components: usize,
    #[arg(long, default_value_t = Hyperparameters::default().kmeans_clusters)]
    kmeans_clusters: usize,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

pub fn run(args: MultivariateArgs) -> Result<()> {
    let pairs = find_pairs(&args.data).with_context(|| format!("looking for data in {}", args.data.display()))?;
    let hp = Hyperparameters {
        pca_components: args.pca_components,
        kmeans_clusters: args.kmeans_clusters,
        ..Hyperparameters::default()
    };
    eprintln!("evaluating {} machines (fit on train, score test)…", pairs.len());
    let progress = |done: usize, total: usize, m: &MachineResult| {
        eprintln!(
            "  [{done}/{total}] {:<14} AUC-PR {:.3}  F1 {:.3}  (PCA alone {:.3}, IsolationForest {:.3})",
            m.name, m.auc_pr, m.f1, m.pca.auc_pr, m.isolation_forest.auc_pr
        );
    };
    let report = evaluate_pairs(&pairs, &hp, &progress)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{}", table(&report)),
    }
    Ok(())
}

fn table(r: &Report) -> String {
    let mut s = format!(
        "{:<14} {:>6} {:>6} {:>8} {:>6} {:>8} {:>10} {:>8} {:>7} {:>6}\n",
        "machine", "rows", "anom.", "AUC-PR", "F1", "PCA AUC", "k-means AUC", "IF AUC", "PCA F1", "IF F1"
    );
    for m in &r.machines {
        s += &format!(
            "{:<14} {:>6} {:>6} {:>8.3} {:>6.3} {:>8.3} {:>10.3} {:>8.3} {:>7.3} {:>6.3}\n",
            m.name,
            m.test_rows,
            m.anomalous_rows,
            m.auc_pr,
            m.f1,
            m.pca.auc_pr,
            m.kmeans.auc_pr,
            m.isolation_forest.auc_pr,
            m.pca.f1,
            m.isolation_forest.f1
        );
    }
    let o = &r.overall;
    s += &format!(
        "{:<14} {:>6} {:>6} {:>8.3} {:>6.3} {:>8.3} {:>10.3} {:>8.3} {:>7.3} {:>6.3}\n",
        "overall (mean)",
        "",
        "",
        o.auc_pr,
        o.f1,
        o.pca.auc_pr,
        o.kmeans.auc_pr,
        o.isolation_forest.auc_pr,
        o.pca.f1,
        o.isolation_forest.f1
    );
    s += "AUC-PR is average precision; F1 is the best point-wise F1 (not point-adjusted). PCA, k-means and\n\
          IsolationForest (IF) are baselines fitted on the same train split; AUC-PR and F1 are Cairn's alerting score.\n";
    s
}
