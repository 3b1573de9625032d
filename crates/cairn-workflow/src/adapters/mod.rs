//! The adapters that carry a change out, and undo it: a dry run that touches nothing, a signed
//! webhook (with the `http` feature), and a command run without a shell. Each one turns what happened into an
//! [`ExecutionOutcome`](cairn_types::ExecutionOutcome) and bounded, captured output; none of them
//! decides whether a change may run — the [`Executor`](crate::Executor) has already checked that.

mod command;
mod dry_run;
#[cfg(feature = "http")]
mod webhook;

pub use command::{CommandAdapter, CommandConfig};
pub use dry_run::DryRunAdapter;
#[cfg(feature = "http")]
pub use webhook::{SIGNATURE_HEADER, WebhookAdapter, sign};

/// Cuts captured output to at most `max` bytes on a character boundary, saying so when it cut.
#[cfg(any(test, feature = "http"))]
pub(crate) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[output truncated at {max} bytes]\n", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn bounded_output_never_splits_a_character_and_says_it_cut() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded("ééééé", 3);
        assert!(cut.starts_with("é\n"), "{cut}");
        assert!(cut.contains("truncated at 3 bytes"));
    }
}

#[cfg(all(test, feature = "http"))]
mod adapter_tests;
