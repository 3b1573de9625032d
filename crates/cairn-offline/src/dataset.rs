//! Reading data sets (Parquet or CSV, by extension) into ndarray: the only place polars is used.
//!
//! A table is one row per step. Columns named `t` or `timestamp` are the step and are dropped;
//! a column named `label` is the ground truth (non-zero = anomalous row); every other column is a
//! feature and must be numeric without nulls. Polars gives columns; linfa needs ndarray 0.16 while
//! polars' own bridge is 0.17, so columns are copied by hand.

use crate::OfflineError;
use cairn_detect::registry::sha256_hex;
use ndarray::Array2;
use polars::prelude::*;
use std::path::Path;

/// Columns that index rows rather than describe them.
const INDEX_COLUMNS: [&str; 2] = ["t", "timestamp"];
/// The ground-truth column of labelled test data.
pub const LABEL_COLUMN: &str = "label";

/// A data set in memory.
#[derive(Debug, Clone)]
pub struct Table {
    /// Feature names, in file column order.
    pub features: Vec<String>,
    /// One row per step, columns in `features` order.
    pub rows: Array2<f64>,
    /// Ground truth per row, when the file has a `label` column.
    pub labels: Option<Vec<bool>>,
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
}

/// Reads a `.parquet` or `.csv` file (CSV: header row, `#` comment lines allowed).
pub fn read_table(path: &Path) -> Result<Table, OfflineError> {
    let bytes = std::fs::read(path).map_err(|source| OfflineError::Io { path: path.into(), source })?;
    let sha256 = sha256_hex(&bytes);
    let polars_err = |source: PolarsError| OfflineError::Polars { path: path.into(), source };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let df = match ext.as_str() {
        "parquet" => ParquetReader::new(std::io::Cursor::new(bytes)).finish().map_err(polars_err)?,
        "csv" => CsvReadOptions::default()
            .with_has_header(true)
            .map_parse_options(|p| p.with_comment_prefix(Some("#")))
            .into_reader_with_file_handle(std::io::Cursor::new(bytes))
            .finish()
            .map_err(polars_err)?,
        _ => {
            return Err(OfflineError::Data {
                path: path.into(),
                detail: "unknown extension: expected .parquet or .csv".into(),
            })
        }
    };
    from_frame(path, &df, sha256)
}

fn from_frame(path: &Path, df: &DataFrame, sha256: String) -> Result<Table, OfflineError> {
    let data_err = |detail: String| OfflineError::Data { path: path.into(), detail };
    let n = df.height();
    let mut features = Vec::new();
    let mut columns: Vec<Vec<f64>> = Vec::new();
    let mut labels = None;
    for col in df.columns() {
        let name = col.name().as_str();
        if INDEX_COLUMNS.contains(&name) {
            continue;
        }
        let values = numeric(col).map_err(|e| data_err(format!("column {name:?}: {e}")))?;
        if name == LABEL_COLUMN {
            labels = Some(values.iter().map(|v| *v != 0.0).collect());
        } else {
            features.push(name.to_string());
            columns.push(values);
        }
    }
    if features.is_empty() {
        return Err(data_err("no feature columns".into()));
    }
    let rows = Array2::from_shape_fn((n, features.len()), |(i, j)| columns[j][i]);
    Ok(Table { features, rows, labels, sha256 })
}

/// A column as f64 values; nulls and non-numeric columns are errors.
fn numeric(col: &Column) -> Result<Vec<f64>, String> {
    if !col.dtype().is_primitive_numeric() && !col.dtype().is_bool() {
        return Err(format!("type {} is not numeric", col.dtype()));
    }
    if col.null_count() > 0 {
        return Err(format!("{} missing values", col.null_count()));
    }
    let cast = col.cast(&DataType::Float64).map_err(|e| e.to_string())?;
    let ca = cast.f64().map_err(|e| e.to_string())?;
    Ok(ca.into_no_null_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_reads_features_labels_and_hash_and_skips_index_and_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.csv");
        let text = "# made by hand for this test\nt,cpu,mem,label\n0,0.5,1,0\n1,0.25,2,1\n";
        std::fs::write(&p, text).expect("write");
        let t = read_table(&p).expect("read");
        assert_eq!(t.features, ["cpu", "mem"]);
        assert_eq!(t.rows, ndarray::array![[0.5, 1.0], [0.25, 2.0]]);
        assert_eq!(t.labels, Some(vec![false, true]));
        assert_eq!(t.sha256, sha256_hex(text.as_bytes()));
    }

    #[test]
    fn missing_values_and_text_columns_are_refused_with_the_column_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, "cpu,mem\n0.5,\n0.2,3\n").expect("write");
        let e = read_table(&p).unwrap_err().to_string();
        assert!(e.contains("\"mem\"") && e.contains("missing"), "{e}");
        std::fs::write(&p, "cpu,host\n0.5,a\n0.2,b\n").expect("write");
        let e = read_table(&p).unwrap_err().to_string();
        assert!(e.contains("\"host\"") && e.contains("not numeric"), "{e}");
        let e = read_table(&dir.path().join("x.txt")).unwrap_err().to_string();
        assert!(e.contains("x.txt"), "{e}");
    }
}
