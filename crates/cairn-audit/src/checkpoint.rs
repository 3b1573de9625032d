//! Signed checkpoints: the log's tree size and root hash, signed with ed25519, in the C2SP formats
//! (<https://c2sp.org/tlog-checkpoint> inside a <https://c2sp.org/signed-note>), so standard
//! transparency-log tooling can read them.
//!
//! ```text
//! cairn.example/audit          ← origin
//! 42                           ← tree size
//! 3q2+7w…=                     ← base64 root hash
//!                              ← blank line
//! — cairn-audit-1 AAAAAd7S…    ← em dash, key name, base64(4-byte key id ‖ 64-byte signature)
//! ```
//!
//! A key is named in a note by its name and key id: the first four bytes of
//! `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`. Verifiers hold a set of pinned public keys and
//! accept a note signed by any of them, so a key can be rotated without making older checkpoints
//! unverifiable. Key files use the signed-note text encodings:
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>` and `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.

use crate::merkle::Hash;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signed-note signature type of ed25519.
const ALG_ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";

/// What is wrong with a key, a note or a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed key: {0}")]
    MalformedKey(String),
    #[error("malformed signed note: {0}")]
    MalformedNote(String),
    #[error("malformed checkpoint body: {0}")]
    MalformedCheckpoint(String),
    #[error("not signed by any pinned key (signed by: {signers}); pin the log's public key")]
    UnknownKey { signers: String },
    #[error("the signature by {name} does not verify: the checkpoint was altered or forged")]
    BadSignature { name: String },
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(CheckpointError::MalformedKey(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// The log's signing key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.name, self.id)
    }
}

impl NoteSigner {
    /// A signer from a 32-byte ed25519 seed (the caller supplies the randomness).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, CheckpointError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(NoteSigner { name: name.to_string(), id, key })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, CheckpointError> {
        let text = text.trim();
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| CheckpointError::MalformedKey("a signing key starts with PRIVATE+KEY+".into()))?;
        let (name, id, key) = split_key(rest)?;
        let seed: [u8; 32] = key
            .try_into()
            .map_err(|_| CheckpointError::MalformedKey("the seed must be 32 bytes".into()))?;
        let signer = NoteSigner::from_seed(name, seed)?;
        if signer.id != id {
            return Err(CheckpointError::MalformedKey(format!("key id {id:08x} does not match the key")));
        }
        Ok(signer)
    }

    /// The text encoding [`NoteSigner::parse`] reads. Secret: keep it out of the data directory.
    pub fn encode(&self) -> String {
        let mut b = vec![ALG_ED25519];
        b.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, B64.encode(b))
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs a note text (which must end in a newline) and returns the whole signed note.
    pub fn sign_note(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut b = self.id.to_be_bytes().to_vec();
        b.extend_from_slice(&sig.to_bytes());
        format!("{text}\n{DASH}{} {}\n", self.name, B64.encode(b))
    }

    /// Signs a checkpoint.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_note(&checkpoint.body())
    }
}

fn split_key(rest: &str) -> Result<(&str, u32, Vec<u8>), CheckpointError> {
    let mut parts = rest.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CheckpointError::MalformedKey("expected <name>+<hex key id>+<base64 key>".into()));
    };
    check_name(name)?;
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or_else(|| CheckpointError::MalformedKey(format!("key id {id:?} is not 8 hex digits")))?;
    let key = B64
        .decode(key)
        .map_err(|e| CheckpointError::MalformedKey(format!("key is not base64: {e}")))?;
    match key.split_first() {
        Some((&ALG_ED25519, k)) => Ok((name, id, k.to_vec())),
        _ => Err(CheckpointError::MalformedKey("only ed25519 keys (type 0x01) are supported".into())),
    }
}

/// A pinned public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex id>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<NoteVerifier, CheckpointError> {
        let (name, id, key) = split_key(text.trim())?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| CheckpointError::MalformedKey("the public key must be 32 bytes".into()))?;
        if key_id(name, &key) != id {
            return Err(CheckpointError::MalformedKey(format!("key id {id:08x} does not match the key")));
        }
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|e| CheckpointError::MalformedKey(format!("not an ed25519 public key: {e}")))?;
        Ok(NoteVerifier { name: name.to_string(), id, key })
    }

    pub fn encode(&self) -> String {
        let mut b = vec![ALG_ED25519];
        b.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(b))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }
}

/// A log state: C2SP tlog-checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// `<origin>\n<size>\n<base64 root>\n`
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses a checkpoint body; extension lines after the root are allowed and ignored.
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |m: &str| CheckpointError::MalformedCheckpoint(m.to_string());
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| bad("missing origin line"))?;
        let size = lines.next().ok_or_else(|| bad("missing tree size line"))?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad("tree size must be a decimal number without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| bad("tree size out of range"))?;
        let root = lines.next().ok_or_else(|| bad("missing root hash line"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root hash must be 32 bytes in base64"))?;
        Ok(Checkpoint { origin: origin.to_string(), size, root })
    }
}

/// A checkpoint whose signature checked out against a pinned key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The name of the key that signed it.
    pub key_name: String,
    pub key_id: u32,
}

/// Splits a signed note into its text and its signature lines.
fn split_note(note: &str) -> Result<(&str, Vec<&str>), CheckpointError> {
    let bad = |m: &str| CheckpointError::MalformedNote(m.to_string());
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("control characters other than newline"));
    }
    let sep = note.rfind("\n\n").ok_or_else(|| bad("no blank line before the signatures"))?;
    let text = &note[..sep + 1];
    let sigs = &note[sep + 2..];
    if !sigs.ends_with('\n') {
        return Err(bad("the last signature line must end in a newline"));
    }
    let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
    if lines.is_empty() || lines.iter().any(|l| !l.starts_with(DASH)) {
        return Err(bad("signature lines start with an em dash and a space"));
    }
    Ok((text, lines))
}

/// Opens a signed checkpoint: at least one signature must be by a pinned key and verify; lines
/// by unknown keys are ignored (witness cosignatures, for instance).
pub fn open_checkpoint(note: &str, pinned: &[NoteVerifier]) -> Result<VerifiedCheckpoint, CheckpointError> {
    let (text, lines) = split_note(note)?;
    let mut signers = Vec::new();
    for line in lines {
        let rest = &line[DASH.len()..];
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| CheckpointError::MalformedNote("signature line without a signature".into()))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| CheckpointError::MalformedNote("signature is not base64".into()))?;
        if sig.len() != 4 + 64 {
            signers.push(format!("{name} (not ed25519)"));
            continue;
        }
        let id = u32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]);
        signers.push(format!("{name}+{id:08x}"));
        let Some(v) = pinned.iter().find(|v| v.name == name && v.id == id) else { continue };
        let Ok(signature) = Signature::from_slice(&sig[4..]) else {
            return Err(CheckpointError::BadSignature { name: name.to_string() });
        };
        if v.key.verify(text.as_bytes(), &signature).is_err() {
            return Err(CheckpointError::BadSignature { name: name.to_string() });
        }
        let checkpoint = Checkpoint::parse_body(text)?;
        return Ok(VerifiedCheckpoint { checkpoint, key_name: v.name.clone(), key_id: v.id });
    }
    Err(CheckpointError::UnknownKey { signers: signers.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::from_seed(name, [seed; 32]).expect("signer")
    }

    fn cp(size: u64) -> Checkpoint {
        Checkpoint { origin: "cairn.test/audit".into(), size, root: leaf_hash(&size.to_be_bytes()) }
    }

    #[test]
    fn a_signed_checkpoint_has_the_c2sp_shape_and_opens() {
        let s = signer("cairn-audit", 7);
        let note = s.sign(&cp(42));
        let mut lines = note.lines();
        assert_eq!(lines.next(), Some("cairn.test/audit"));
        assert_eq!(lines.next(), Some("42"));
        assert_eq!(lines.next(), Some(B64.encode(cp(42).root).as_str()));
        assert_eq!(lines.next(), Some(""));
        let sig = lines.next().expect("signature line");
        assert!(sig.starts_with("\u{2014} cairn-audit "), "{sig}");
        let raw = B64.decode(sig.rsplit(' ').next().expect("b64")).expect("b64");
        assert_eq!(raw.len(), 68);
        assert_eq!(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]), s.verifier().key_id());
        let v = open_checkpoint(&note, &[s.verifier()]).expect("opens");
        assert_eq!(v.checkpoint, cp(42));
        assert_eq!(v.key_name, "cairn-audit");
    }

    /// The key id rule of the signed-note spec, recomputed independently of `key_id`.
    #[test]
    fn key_id_is_the_first_four_bytes_of_the_spec_hash() {
        let s = signer("example.com/log", 1);
        let pk = s.key.verifying_key().to_bytes();
        let mut input = b"example.com/log\n\x01".to_vec();
        input.extend_from_slice(&pk);
        let d = Sha256::digest(&input);
        assert_eq!(s.verifier().key_id().to_be_bytes(), [d[0], d[1], d[2], d[3]]);
    }

    #[test]
    fn keys_round_trip_through_their_text_encodings() {
        let s = signer("cairn-audit", 9);
        let again = NoteSigner::parse(&s.encode()).expect("signer parses");
        assert_eq!(again.verifier(), s.verifier());
        let v = NoteVerifier::parse(&s.verifier().encode()).expect("verifier parses");
        assert_eq!(v, s.verifier());
        assert!(s.verifier().encode().starts_with("cairn-audit+"));
        // A key id that does not belong to the key is refused.
        let enc = s.verifier().encode();
        let forged = enc.replacen(&format!("{:08x}", s.verifier().key_id()), "00000000", 1);
        assert!(NoteVerifier::parse(&forged).is_err());
    }

    #[test]
    fn a_checkpoint_signed_with_the_wrong_key_is_refused() {
        let log = signer("cairn-audit", 1);
        let eve = signer("cairn-audit", 2);
        let note = eve.sign(&cp(5));
        assert!(matches!(open_checkpoint(&note, &[log.verifier()]), Err(CheckpointError::UnknownKey { .. })));
    }

    #[test]
    fn an_altered_checkpoint_is_refused() {
        let s = signer("cairn-audit", 1);
        let note = s.sign(&cp(5));
        let forged = note.replacen("\n5\n", "\n6\n", 1);
        assert_eq!(
            open_checkpoint(&forged, &[s.verifier()]),
            Err(CheckpointError::BadSignature { name: "cairn-audit".into() })
        );
        // Swapping in another key's signature line under the right key's name and id is refused too.
        let other = signer("other", 3).sign(&cp(5));
        let other_sig = other.lines().last().expect("sig").rsplit(' ').next().expect("b64");
        let mut raw = B64.decode(other_sig).expect("b64");
        raw[..4].copy_from_slice(&s.verifier().key_id().to_be_bytes());
        let spliced = format!("{}\n\u{2014} cairn-audit {}\n", cp(5).body(), B64.encode(raw));
        assert!(matches!(open_checkpoint(&spliced, &[s.verifier()]), Err(CheckpointError::BadSignature { .. })));
    }

    #[test]
    fn after_a_key_rotation_both_generations_verify_against_the_pinned_set() {
        let old = signer("cairn-audit-2025", 1);
        let new = signer("cairn-audit-2026", 2);
        let pinned = [old.verifier(), new.verifier()];
        let a = open_checkpoint(&old.sign(&cp(3)), &pinned).expect("old key");
        let b = open_checkpoint(&new.sign(&cp(9)), &pinned).expect("new key");
        assert_eq!((a.key_name.as_str(), b.key_name.as_str()), ("cairn-audit-2025", "cairn-audit-2026"));
        // Unpinning the old key makes its checkpoints unverifiable: pinning is what trust means.
        assert!(open_checkpoint(&old.sign(&cp(3)), &pinned[1..]).is_err());
    }

    #[test]
    fn malformed_notes_and_bodies_are_refused() {
        let s = signer("k", 1);
        assert!(open_checkpoint("no signatures\n", &[s.verifier()]).is_err());
        assert!(open_checkpoint(&s.sign_note("o\n01\nAAAA\n"), &[s.verifier()]).is_err());
        assert!(open_checkpoint(&s.sign_note("o\n1\nnot-base64\n"), &[s.verifier()]).is_err());
        assert!(Checkpoint::parse_body("o\n-1\nAAAA\n").is_err());
        // Extension lines are allowed.
        let with_ext = format!("{}ext line\n", cp(2).body());
        assert_eq!(open_checkpoint(&s.sign_note(&with_ext), &[s.verifier()]).expect("opens").checkpoint, cp(2));
    }
}
