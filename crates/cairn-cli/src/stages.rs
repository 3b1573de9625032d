//! How the decision card shows a staged change: its stages and where it stands.

use cairn_proto::v1 as pb;

/// e.g. `stages canary ✓ → 25% (awaiting approval) → 100%`.
pub fn stages_line(ch: &pb::ChangeRequest) -> String {
    let done = ch.stages_done as usize;
    let parts: Vec<String> = ch
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i < done && ch.state == "rollback_pending" {
                format!("{s} done (stopped: to be rolled back)")
            } else if i < done && ch.state == "rolled_back" {
                format!("{s} rolled back")
            } else if i < done {
                format!("{s} done")
            } else if i == done && ch.state == "awaiting_stage_approval" {
                format!("{s} (awaiting approval: cairn review approve)")
            } else if i == done && ch.state == "executing" {
                format!("{s} (running)")
            } else {
                s.clone()
            }
        })
        .collect();
    let mut line = format!("stages {}", parts.join(" -> "));
    if ch.stages.len() > 1 {
        line.push_str(if ch.stage_approval { "; each stage after the first waits for approval" } else { "; stages run through without pausing" });
    }
    if !ch.stop_cause.is_empty() {
        line.push_str(&format!("; stopped ({}) by {}: {}", ch.stop_cause, ch.stopped_by, ch.stop_reason));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_marks_done_stages_and_the_one_awaiting_approval() {
        let ch = pb::ChangeRequest {
            state: "awaiting_stage_approval".into(),
            stages: vec!["canary".into(), "25%".into(), "100%".into()],
            stages_done: 1,
            next_stage: "25%".into(),
            stage_approval: true,
            ..Default::default()
        };
        assert_eq!(
            stages_line(&ch),
            "stages canary done -> 25% (awaiting approval: cairn review approve) -> 100%; each stage after the first waits for approval"
        );
    }

    #[test]
    fn a_stopped_rollout_shows_what_is_or_was_rolled_back() {
        let mut ch = pb::ChangeRequest {
            state: "rollback_pending".into(),
            stages: vec!["canary".into(), "25%".into(), "100%".into()],
            stages_done: 2,
            stage_approval: true,
            stop_cause: "rejected".into(),
            stopped_by: "user:bob".into(),
            stop_reason: "canary error rate up".into(),
            ..Default::default()
        };
        let stopped = "; each stage after the first waits for approval; stopped (rejected) by user:bob: canary error rate up";
        assert_eq!(
            stages_line(&ch),
            format!("stages canary done (stopped: to be rolled back) -> 25% done (stopped: to be rolled back) -> 100%{stopped}")
        );
        ch.state = "rolled_back".into();
        assert_eq!(stages_line(&ch), format!("stages canary rolled back -> 25% rolled back -> 100%{stopped}"));
        ch.stage_approval = false;
        ch.stop_cause.clear();
        assert_eq!(stages_line(&ch), "stages canary rolled back -> 25% rolled back -> 100%; stages run through without pausing");
    }
}
