//! `cairn breakglass …`, `cairn freeze …` and `cairn guard …` against a running `cairn serve`,
//! started as a user would start it. The server process is killed when the test ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]


use crate::common::{Server, cairn, ok};

#[test]
fn breakglass_and_freeze_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "user:dana", "[guardrails]\nfreeze = true", &[]);
    let base = server.client_args();

    // `guardrails.freeze = true` in the config: the server starts frozen.
    let status: serde_json::Value = serde_json::from_str(&ok(cairn(&[&["guard", "status", "--output", "json"], &base[..]].concat()))).unwrap();
    assert_eq!((status["frozen"].as_bool(), status["freeze_by"].as_str()), (Some(true), Some("config")));
    let off = ok(cairn(&[&["freeze", "off", "--reason", "release done"], &base[..]].concat()));
    assert!(off.contains("not frozen"), "{off}");
    let no_reason = cairn(&[&["freeze", "on", "--reason", ""], &base[..]].concat());
    assert!(!no_reason.status.success() && String::from_utf8_lossy(&no_reason.stderr).contains("reason"));

    let too_long = cairn(
        &[&["breakglass", "open", "--purpose", "bank link", "--link", "inc-9", "--action", "firewall_relax", "--target", "production/payments/*", "--duration", "5h"], &base[..]].concat(),
    );
    assert!(!too_long.status.success());
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("4 hours"), "{}", String::from_utf8_lossy(&too_long.stderr));
    let opened: Vec<serde_json::Value> = serde_json::from_str(&ok(cairn(
        &[
            &["breakglass", "open", "--purpose", "bank link", "--link", "inc-9", "--action", "firewall_relax", "--target", "production/payments/*", "--duration", "2h", "--max-uses", "3", "--output", "json"],
            &base[..],
        ]
        .concat(),
    )))
    .unwrap();
    let id = opened[0]["id"].as_str().unwrap().to_string();
    assert_eq!((opened[0]["owner"].as_str(), opened[0]["state"].as_str(), opened[0]["max_uses"].as_u64()), (Some("user:dana"), Some("active"), Some(3)));
    let table = ok(cairn(&[&["breakglass", "list", "--active"], &base[..]].concat()));
    assert!(table.contains(&id) && table.contains("0/3"), "{table}");
    let revoked = ok(cairn(&[&["breakglass", "revoke", &id, "--reason", "link restored"], &base[..]].concat()));
    assert!(revoked.contains("revoked"), "{revoked}");
    assert!(!ok(cairn(&[&["breakglass", "list", "--active"], &base[..]].concat())).contains(&id));

    let audit = ok(cairn(&[&["audit", "query", "--actor", "user:dana", "--output", "json"], &base[..]].concat()));
    for kind in ["freeze.off", "breakglass.opened", "breakglass.revoked"] {
        assert!(audit.contains(kind), "{kind} missing: {audit}");
    }
    assert!(ok(cairn(&[&["audit", "verify"], &base[..]].concat())).contains("audit chain OK"));
}
