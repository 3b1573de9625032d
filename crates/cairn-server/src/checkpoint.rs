//! Signed audit checkpoints: the signing key, the sink they are written to, and the task that
//! writes one every `checkpoint_every_secs` or every `checkpoint_every_entries` new entries, plus
//! one at graceful shutdown.
//!
//! A checkpoint is only worth something if whoever can edit the store cannot also edit the
//! checkpoints, so the sink is meant to be another volume (`[audit] checkpoint_dir`, or
//! `--checkpoint-dir`); the default inside the data directory works but is warned about. The
//! signing key lives beside the data directory — never inside it — so a copy of the data
//! directory handed to an auditor does not carry the key that could re-sign a forged history.
//!
//! Files are named `<counter>-size-<n>.checkpoint` with a zero-padded counter, so the written
//! order is the name order; the verifier refuses a checkpoint whose size goes backwards in that
//! order (an old checkpoint replayed as the newest).

use cairn_audit::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use cairn_audit::verify::PresentedCheckpoint;
use cairn_store::{AuditProofs, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// `[audit]` in the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where signed checkpoints are written. Put it on another volume than `data_dir`.
    /// Default: `<data_dir>/checkpoints`, with a warning at start-up.
    pub checkpoint_dir: Option<PathBuf>,
    /// The ed25519 signing key (signed-note `PRIVATE+KEY+…` text). Default: generated on first start
    /// at `<data_dir>.audit-key` beside the data directory, with its public key in `….pub`.
    pub signing_key: Option<PathBuf>,
    /// Write a checkpoint at least this often while entries are being added.
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub checkpoint_every_secs: u64,
    /// …or as soon as this many entries are not yet covered by one.
    pub checkpoint_every_entries: u64,
    /// Extra pinned public keys (signed-note verifier keys, `<name>+<id>+<base64>`) that `Verify`
    /// accepts, e.g. the keys used before a rotation. The current key is always accepted.
    pub public_keys: Vec<String>,
    /// The log's name on the first line of every checkpoint and the signing key's name.
    pub origin: String,
    /// A second directory that receives a copy of every checkpoint as it is written: an outside
    /// witness of the latest signed size. Put it on another volume, writable by Cairn but owned by
    /// someone else (e.g. a group-writable directory of an audit account), so that whoever can
    /// truncate the store and delete the checkpoints beside it cannot also remove the witness's
    /// copy. `cairn audit verify --witness DIR` checks the log against it.
    pub witness_dir: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_dir: None,
            signing_key: None,
            checkpoint_every_secs: 60,
            checkpoint_every_entries: 1000,
            public_keys: Vec::new(),
            origin: DEFAULT_ORIGIN.into(),
            witness_dir: None,
        }
    }
}

pub const DEFAULT_ORIGIN: &str = "cairn.local/audit";
const CHECKPOINT_SUFFIX: &str = ".checkpoint";

/// Why checkpoints cannot be set up. Each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointSetupError {
    #[error("cannot read the audit signing key {path}: {source}")]
    ReadKey { path: PathBuf, source: std::io::Error },
    #[error("cannot write the generated audit signing key {path}: {source}")]
    WriteKey { path: PathBuf, source: std::io::Error },
    #[error("audit signing key {path}: {source}")]
    BadKey { path: PathBuf, source: cairn_audit::checkpoint::CheckpointError },
    #[error("audit.public_keys entry {index}: {source}")]
    BadPublicKey { index: usize, source: cairn_audit::checkpoint::CheckpointError },
    #[error("cannot use the checkpoint directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("audit.signing_key must not be inside the data directory ({path}): a copy of the data would carry the key that can re-sign it")]
    KeyInsideDataDir { path: PathBuf },
    #[error("cannot read the audit tree head: {0}")]
    Store(#[from] cairn_store::StoreError),
}

/// Where the key goes when none is configured: beside the data directory, never inside it.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    let name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "cairn-data".into());
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.join(format!("{name}.audit-key"))
}

/// The public key file written beside a signing key file.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    let mut s = key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

pub fn default_checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// Loads the signing key, or generates one (and its `.pub`) when the file does not exist.
pub fn load_or_generate_key(path: &Path, name: &str) -> Result<NoteSigner, CheckpointSetupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            NoteSigner::parse(&text).map_err(|source| CheckpointSetupError::BadKey { path: path.into(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = NoteSigner::from_seed(name, rand::random::<[u8; 32]>())
                .map_err(|source| CheckpointSetupError::BadKey { path: path.into(), source })?;
            write_secret(path, &format!("{}\n", signer.encode()))
                .map_err(|source| CheckpointSetupError::WriteKey { path: path.into(), source })?;
            let public = public_key_path(path);
            std::fs::write(&public, format!("{}\n", signer.verifier().encode()))
                .map_err(|source| CheckpointSetupError::WriteKey { path: public.clone(), source })?;
            warn!(
                key = %path.display(),
                public_key = %public.display(),
                "generated a new audit signing key; back it up, and give auditors the public key"
            );
            Ok(signer)
        }
        Err(source) => Err(CheckpointSetupError::ReadKey { path: path.into(), source }),
    }
}

/// Writes `dir/name` through a temporary file and a rename, so a reader never sees half of it.
fn write_atomically(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

/// Reads every checkpoint in `dir`, in written (name) order. A missing directory has none.
pub fn read_checkpoints(dir: &Path) -> std::io::Result<Vec<PresentedCheckpoint>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(CHECKPOINT_SUFFIX))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|label| Ok(PresentedCheckpoint { note: std::fs::read_to_string(dir.join(&label))?, label }))
        .collect()
}

/// Reads pinned public keys: each file holds one verifier key per non-empty line.
pub fn read_public_keys(paths: &[PathBuf]) -> Result<Vec<NoteVerifier>, String> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read public key {}: {e}", p.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(NoteVerifier::parse(line).map_err(|e| format!("public key {}: {e}", p.display()))?);
        }
    }
    Ok(out)
}

/// Mutable writer state: the counter for the next file name and the tree head last signed.
#[derive(Debug)]
struct Written {
    counter: u64,
    size: u64,
    root: Option<cairn_audit::merkle::Hash>,
}

/// Signs the store's tree head and writes it to the checkpoint directory.
#[derive(Debug)]
pub struct Checkpointer {
    store: Arc<dyn Store>,
    signer: NoteSigner,
    pinned: Vec<NoteVerifier>,
    origin: String,
    dir: PathBuf,
    /// Where a copy of every checkpoint goes too (`audit.witness_dir`).
    witness: Option<PathBuf>,
    written: Mutex<Written>,
}

impl Checkpointer {
    /// Loads or generates the key, creates the directory and picks up where earlier runs left off.
    pub fn open(
        cfg: &AuditConfig,
        data_dir: &Path,
        store: Arc<dyn Store>,
    ) -> Result<Checkpointer, CheckpointSetupError> {
        let key_path = cfg.signing_key.clone().unwrap_or_else(|| default_key_path(data_dir));
        if let (Ok(k), Ok(d)) = (absolute(&key_path), absolute(data_dir))
            && k.starts_with(&d)
        {
            return Err(CheckpointSetupError::KeyInsideDataDir { path: key_path });
        }
        let signer = load_or_generate_key(&key_path, &cfg.origin)?;
        info!(key = %key_path.display(), public_key = %signer.verifier().encode(), "audit checkpoints are signed with this key");
        let mut pinned = vec![signer.verifier()];
        for (index, k) in cfg.public_keys.iter().enumerate() {
            pinned.push(NoteVerifier::parse(k).map_err(|source| CheckpointSetupError::BadPublicKey { index, source })?);
        }
        let dir = match &cfg.checkpoint_dir {
            Some(d) => d.clone(),
            None => {
                let d = default_checkpoint_dir(data_dir);
                warn!(
                    dir = %d.display(),
                    "audit checkpoints are written inside the data directory; set [audit] checkpoint_dir (or --checkpoint-dir) to another volume so whoever can edit the store cannot also edit them"
                );
                d
            }
        };
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointSetupError::Dir { path: dir.clone(), source })?;
        let existing = read_checkpoints(&dir).map_err(|source| CheckpointSetupError::Dir { path: dir.clone(), source })?;
        let counter = existing.iter().filter_map(|c| c.label.split('-').next()?.parse::<u64>().ok()).max().unwrap_or(0);
        // The last checkpoint is only trusted if it verifies against our own keys.
        let last = existing.last().and_then(|c| cairn_audit::checkpoint::open_checkpoint(&c.note, &pinned).ok());
        let (size, root) = last.map_or((0, None), |v| (v.checkpoint.size, Some(v.checkpoint.root)));
        if let Some(w) = &cfg.witness_dir {
            // Refuse to start rather than run with a witness that silently receives nothing.
            let probe = w.join(".cairn-witness-probe");
            std::fs::create_dir_all(w)
                .and_then(|()| std::fs::write(&probe, b"probe"))
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|source| CheckpointSetupError::Dir { path: w.clone(), source })?;
            info!(witness = %w.display(), "every audit checkpoint is also written to the witness directory");
        }
        Ok(Checkpointer {
            store,
            signer,
            pinned,
            origin: cfg.origin.clone(),
            dir,
            witness: cfg.witness_dir.clone(),
            written: Mutex::new(Written { counter, size, root }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The keys `Verify` accepts: the current one and the configured older ones.
    pub fn pinned(&self) -> &[NoteVerifier] {
        &self.pinned
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The size covered by the last checkpoint written.
    pub fn last_size(&self) -> u64 {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).size
    }

    /// Signs and writes the current tree head, unless it is already covered. Returns the file.
    pub fn write_now(&self) -> Result<Option<PathBuf>, String> {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let (size, root) = self.store.audit_tree_head().map_err(|e| e.to_string())?;
        if size == 0 || size <= w.size {
            return Ok(None);
        }
        // Never sign a history that forks from what was signed before: the tree's prefix must
        // still hash to the last signed root (the nodes are append-only, so this is consistency).
        if let Some(last_root) = w.root {
            let now = self.store.audit_tree_root_at(w.size).map_err(|e| e.to_string())?;
            if now != Some(last_root) {
                return Err(format!(
                    "refusing to sign: the stored audit tree no longer matches the last checkpoint (size {}); the log was altered — run `cairn audit verify`",
                    w.size
                ));
            }
        }
        let note = self.signer.sign(&Checkpoint { origin: self.origin.clone(), size, root });
        let name = format!("{:010}-size-{size}{CHECKPOINT_SUFFIX}", w.counter + 1);
        let path = self.dir.join(&name);
        write_atomically(&self.dir, &name, &note).map_err(|e| format!("cannot write checkpoint {}: {e}", path.display()))?;
        w.counter += 1;
        w.size = size;
        w.root = Some(root);
        if let Some(witness) = &self.witness {
            write_atomically(witness, &name, &note).map_err(|e| {
                format!("checkpoint {} written, but its copy to the witness {} failed: {e}", path.display(), witness.display())
            })?;
        }
        Ok(Some(path))
    }

    async fn write_in_background(self: &Arc<Self>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.write_now()).await {
            Ok(Ok(Some(path))) => info!(checkpoint = %path.display(), "audit checkpoint written"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => error!(error = %e, "audit checkpoint not written"),
            Err(e) => error!(error = %e, "audit checkpoint task failed"),
        }
    }

    /// Writes a checkpoint every `every` while entries arrive, or as soon as `every_entries`
    /// entries are uncovered. Ends on `cancel`; the shutdown checkpoint is written by
    /// [`Checkpointer::write_final`] once every other task has stopped.
    pub async fn run(
        self: Arc<Self>,
        mut head: watch::Receiver<u64>,
        every: Duration,
        every_entries: u64,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.write_in_background().await,
                changed = head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let h = *head.borrow_and_update();
                    if h.saturating_sub(self.last_size()) >= every_entries.max(1) {
                        self.write_in_background().await;
                    }
                }
            }
        }
    }

    /// The checkpoint at graceful shutdown, after the last state change.
    pub async fn write_final(self: &Arc<Self>) {
        self.write_in_background().await;
    }
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    // The data directory exists by now; the key may not, so resolve its parent.
    if p.exists() {
        return p.canonicalize();
    }
    let parent = p.parent().filter(|x| !x.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.canonicalize()?.join(p.file_name().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::SqliteStore;
    use cairn_types::AuditDraft;

    fn store_with(n: usize) -> Arc<dyn Store> {
        let s = SqliteStore::open_in_memory().expect("store");
        let s: Arc<dyn Store> = Arc::new(s);
        append(&s, n);
        s
    }

    fn append(s: &Arc<dyn Store>, n: usize) {
        for _ in 0..n {
            s.record_audit(&[AuditDraft { actor: "system:cairn".into(), kind: "test".into(), ..Default::default() }], 1)
                .expect("append");
        }
    }

    fn config(dir: &Path) -> AuditConfig {
        AuditConfig {
            checkpoint_dir: Some(dir.join("elsewhere/checkpoints")),
            signing_key: Some(dir.join("keys/audit.key")),
            ..AuditConfig::default()
        }
    }

    #[test]
    fn checkpoints_are_written_in_order_only_when_the_log_grew_and_verify() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("keys")).expect("mkdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let store = store_with(3);
        let cp = Checkpointer::open(&config(tmp.path()), &data, store.clone()).expect("open");
        assert!(cp.write_now().expect("write").is_some());
        assert!(cp.write_now().expect("write").is_none(), "nothing new, nothing written");
        append(&store, 2);
        let second = cp.write_now().expect("write").expect("written");
        assert!(second.file_name().expect("name").to_string_lossy().starts_with("0000000002-size-5"), "{second:?}");
        let found = read_checkpoints(cp.dir()).expect("read");
        assert_eq!(found.len(), 2);
        let report = store.verify_audit_anchored(&found, cp.pinned(), Some(DEFAULT_ORIGIN)).expect("verifies");
        assert_eq!(report.latest.expect("latest").checkpoint.size, 5);

        // A restart continues the numbering and reuses the key from its file.
        let again = Checkpointer::open(&config(tmp.path()), &data, store.clone()).expect("reopen");
        assert_eq!(again.last_size(), 5);
        assert_eq!(again.pinned()[0], cp.pinned()[0]);
        append(&store, 1);
        let third = again.write_now().expect("write").expect("written");
        assert!(third.file_name().expect("name").to_string_lossy().starts_with("0000000003-"));
    }

    #[test]
    fn every_checkpoint_is_copied_to_the_witness_and_an_unwritable_witness_refuses_to_start() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("keys")).expect("mkdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let store = store_with(3);
        let cfg = AuditConfig { witness_dir: Some(tmp.path().join("witness")), ..config(tmp.path()) };
        let cp = Checkpointer::open(&cfg, &data, store.clone()).expect("open");
        cp.write_now().expect("write").expect("written");
        append(&store, 2);
        cp.write_now().expect("write").expect("written");
        let mine = read_checkpoints(cp.dir()).expect("read");
        let witnessed = read_checkpoints(&tmp.path().join("witness")).expect("read witness");
        assert_eq!(witnessed.len(), 2);
        assert_eq!(witnessed.iter().map(|c| &c.note).collect::<Vec<_>>(), mine.iter().map(|c| &c.note).collect::<Vec<_>>());
        // A witness path that cannot be a directory (a file stands there).
        std::fs::write(tmp.path().join("not-a-dir"), b"x").expect("write");
        let bad = AuditConfig { witness_dir: Some(tmp.path().join("not-a-dir")), ..config(tmp.path()) };
        assert!(Checkpointer::open(&bad, &data, store).is_err(), "an unusable witness is a start-up error");
    }

    #[test]
    fn the_writer_refuses_to_sign_a_tree_that_forks_from_its_last_checkpoint() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("keys")).expect("mkdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let db = data.join("cairn.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).expect("store"));
        append(&store, 3);
        let cp = Checkpointer::open(&config(tmp.path()), &data, store.clone()).expect("open");
        cp.write_now().expect("write").expect("written");
        // Someone rewrites the tree's nodes behind the store's back, then the log grows.
        let c = rusqlite::Connection::open(&db).expect("open db");
        c.execute_batch(
            "DROP TRIGGER audit_tree_no_update; UPDATE audit_tree SET hash = zeroblob(32) WHERE level = 1 AND idx = 0;",
        )
        .expect("tamper");
        append(&store, 1);
        let err = cp.write_now().expect_err("refused");
        assert!(err.contains("refusing to sign") && err.contains("size 3"), "{err}");
        // A restarted writer trusts only a checkpoint it can verify, and refuses the same way.
        let again = Checkpointer::open(&config(tmp.path()), &data, store.clone()).expect("reopen");
        assert!(again.write_now().is_err());
    }

    #[test]
    fn a_generated_key_goes_beside_the_data_dir_with_its_public_half() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("cairn-data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let cfg = AuditConfig { checkpoint_dir: Some(tmp.path().join("ck")), ..AuditConfig::default() };
        let cp = Checkpointer::open(&cfg, &data, store_with(1)).expect("open");
        let key = tmp.path().join("cairn-data.audit-key");
        assert!(key.exists(), "generated beside, not inside, the data directory");
        let public = read_public_keys(&[public_key_path(&key)]).expect("pub");
        assert_eq!(public, vec![cp.pinned()[0].clone()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_signing_key_inside_the_data_dir_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let cfg = AuditConfig { signing_key: Some(data.join("audit.key")), ..AuditConfig::default() };
        let err = Checkpointer::open(&cfg, &data, store_with(0)).expect_err("refused");
        assert!(matches!(err, CheckpointSetupError::KeyInsideDataDir { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_signs_every_n_entries_and_every_interval() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("keys")).expect("mkdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let store = store_with(0);
        let cp = Arc::new(Checkpointer::open(&config(tmp.path()), &data, store.clone()).expect("open"));
        let (tx, rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(cp.clone().run(rx, Duration::from_secs(60), 4, cancel.clone()));
        let settle = || async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        // Three entries: below the entry threshold and before the interval: nothing yet.
        append(&store, 3);
        tx.send_replace(3);
        settle().await;
        assert_eq!(cp.last_size(), 0);
        // The fourth entry reaches the threshold.
        append(&store, 1);
        tx.send_replace(4);
        settle().await;
        assert_eq!(cp.last_size(), 4);
        // One more entry is signed when the minute is up.
        append(&store, 1);
        tx.send_replace(5);
        settle().await;
        assert_eq!(cp.last_size(), 4);
        tokio::time::sleep(Duration::from_secs(61)).await;
        settle().await;
        assert_eq!(cp.last_size(), 5);
        cancel.cancel();
        task.await.expect("task ends on cancel");
        append(&store, 1);
        cp.write_final().await;
        assert_eq!(cp.last_size(), 6, "the shutdown checkpoint covers the last entry");
    }
}
