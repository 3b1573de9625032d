//! The same recordings as another cluster would send them, to check that the triage depends on
//! what the signals say rather than on this corpus's particulars.
//!
//! `--rename` ([`Renamer`]): every name the corpus's `topology.json` declares (the cluster, the namespace, each service and
//! node) is replaced, as a whole word, wherever it appears: label values, pod and ReplicaSet names
//! built from them, the series ids in `truth.json`, the topology itself. The replacements are
//! neutral words and another cloud's node names, so nothing a name hints at (a `-pg` suffix, a
//! `pool-b` node, a `gke-` prefix) survives. Metric and label *names* are left alone: they are what
//! the exporters define, not what this cluster chose. A triage whose figures change under this
//! has learnt the cluster's names rather than what the signals say.
//!
//! `--node-addresses` ([`NodeAddresses`]): per-node agents scraped at their node's address, as
//! Prometheus's plain `kubernetes_sd` endpoints discovery labels them (`instance="10.128.0.44:9100"`)
//! where kube-prometheus relabels `instance` to the node's name. Every `instance` that is a node's
//! name becomes that node's `host_ip` (from `kube_pod_info`) and port 9100, in the signals and the
//! series ids of `truth.json`; the node's name stays only where `kube_pod_info` pairs it with that
//! address (and in the `node` labels kube-state-metrics writes).
//!
//! `--thin K` ([`thin`]): one sample in K is kept, as a cluster scraping K times less often sends
//! them (every 30 s or 60 s instead of 15 s). Staleness markers are kept, as Prometheus sends them
//! whatever the interval.

use anyhow::{Context, Result};
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;

/// Service names: words that say nothing of what a service does.
const WORDS: [&str; 24] = [
    "amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "harbor", "iris", "jasper", "kestrel", "lumen", "moss",
    "nectar", "onyx", "pylon", "quartz", "reef", "slate", "tundra", "umber", "vale", "willow", "yarrow",
];

/// Rewrites the names `topology.json` declares into another cluster's.
pub struct Renamer {
    pattern: Regex,
    to: HashMap<String, String>,
}

impl Renamer {
    /// The renaming for a recording, from its `topology.json`.
    pub fn new(topology: &Value) -> Result<Renamer> {
        let mut to: HashMap<String, String> = HashMap::new();
        let names = |key: &str| -> Vec<String> {
            topology[key].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(|s| s["name"].as_str().map(String::from)).collect()
        };
        let services = names("services");
        anyhow::ensure!(services.len() <= WORDS.len(), "more than {} services to rename", WORDS.len());
        for (s, w) in services.iter().zip(WORDS) {
            to.insert(s.clone(), w.to_string());
        }
        for (i, n) in names("nodes").iter().enumerate() {
            to.insert(n.clone(), format!("ip-10-20-{}-{}.eu-west-2.compute.internal", i / 4, 10 + i));
        }
        if let Some(c) = topology["cluster"].as_str() {
            to.insert(c.to_string(), "euw2-retail".into());
        }
        if let Some(ns) = topology["namespace"].as_str() {
            to.insert(ns.to_string(), "storefront".into());
        }
        // Longest first, so that a name containing another (a node name holding the cluster's)
        // is replaced whole; whole words only, `-` and `.` being word boundaries as in pod names.
        let mut keys: Vec<&String> = to.keys().collect();
        keys.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let alternation = keys.iter().map(|k| regex::escape(k)).collect::<Vec<_>>().join("|");
        let pattern = Regex::new(&format!(r"\b(?:{alternation})\b")).context("renaming pattern")?;
        Ok(Renamer { pattern, to })
    }

    /// Renames every string in `v`, object keys included (`truth.json` keys maps by series id; a
    /// label or field name is never a declared name as a whole word).
    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (self.text(k), self.value(x))).collect()),
            other => other.clone(),
        }
    }

    fn text(&self, s: &str) -> String {
        self.pattern.replace_all(s, |c: &regex::Captures| self.to[&c[0]].clone()).into_owned()
    }
}

/// Rewrites `instance="<node name>"` into `instance="<its host_ip>:9100"`.
pub struct NodeAddresses {
    address: HashMap<String, String>,
}

impl NodeAddresses {
    /// The nodes' addresses as `kube_pod_info` pairs them (`node`, `host_ip`) in `lines`.
    pub fn new(lines: &[Value]) -> NodeAddresses {
        let mut address = HashMap::new();
        for l in lines {
            for s in l["series"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let labels = &s["labels"];
                if let (Some(node), Some(ip)) = (labels["node"].as_str(), labels["host_ip"].as_str()) {
                    address.entry(node.to_string()).or_insert_with(|| format!("{ip}:9100"));
                }
            }
        }
        NodeAddresses { address }
    }

    /// Rewrites every `instance` label (objects with an `instance` key) and every
    /// `instance="…"` inside a string (series ids) that names a node.
    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let x = match (k.as_str(), x.as_str().and_then(|n| self.address.get(n))) {
                            ("instance", Some(addr)) => Value::String(addr.clone()),
                            _ => self.value(x),
                        };
                        (self.text(k), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn text(&self, s: &str) -> String {
        if !s.contains("instance=\"") {
            return s.to_string();
        }
        let mut out = s.to_string();
        for (node, addr) in &self.address {
            out = out.replace(&format!("instance=\"{node}\""), &format!("instance=\"{addr}\""));
        }
        out
    }
}

/// Keeps one sample in `k` of every series in a remote_write line (those whose time is a multiple
/// of `k` steps), and every staleness marker.
pub fn thin(line: &mut Value, step_ms: i64, k: i64) {
    let Some(series) = line["series"].as_array_mut() else { return };
    for s in series {
        if let Some(samples) = s["samples"].as_array_mut() {
            samples.retain(|p| p[1].as_str() == Some("stale") || p[0].as_i64().is_some_and(|t| t.div_euclid(step_ms) % k == 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_replaced_whole_and_everywhere_but_metric_and_label_names() {
        let topology = json!({"cluster": "use1-media", "namespace": "streaming",
            "services": [{"name": "web"}, {"name": "users-pg"}, {"name": "users"}],
            "nodes": [{"name": "gke-use1-media-pool-a-3kq7"}]});
        let r = Renamer::new(&topology).unwrap();
        let series = json!({"labels": {"__name__": "web_requests_total", "service": "users-pg", "pod": "web-7fmp7-4lcch",
            "node": "gke-use1-media-pool-a-3kq7", "cluster": "use1-media", "namespace": "streaming", "job": "webhook"},
            "id": "series:up{pod=\"users-pg-0\",service=\"users\"}"});
        let out = r.value(&series);
        assert_eq!(out["labels"]["__name__"], "web_requests_total", "a metric name is the exporter's");
        assert_eq!(out["labels"]["service"], "basalt", "users-pg whole, not users + -pg");
        assert_eq!(out["labels"]["pod"], "amber-7fmp7-4lcch");
        assert_eq!(out["labels"]["node"], "ip-10-20-0-10.eu-west-2.compute.internal", "the node whole, not its cluster part");
        assert_eq!((out["labels"]["cluster"].as_str(), out["labels"]["namespace"].as_str()), (Some("euw2-retail"), Some("storefront")));
        assert_eq!(out["labels"]["job"], "webhook", "only whole words");
        assert_eq!(out["id"], "series:up{pod=\"basalt-0\",service=\"cedar\"}");
        assert!(out.to_string().find("use1").is_none() && out.to_string().find("pg").is_none(), "{out}");
    }

    #[test]
    fn a_node_named_instance_becomes_its_address_in_labels_and_series_ids() {
        let lines = [json!({"kind": "remote_write", "series": [
            {"labels": {"__name__": "kube_pod_info", "node": "n1", "host_ip": "10.0.0.7", "instance": "10.64.2.14:8443", "pod": "a-1"}, "samples": []},
            {"labels": {"__name__": "node_load1", "instance": "n1", "job": "node-exporter"}, "samples": []}]})];
        let a = NodeAddresses::new(&lines);
        let out = a.value(&lines[0]);
        assert_eq!(out["series"][1]["labels"]["instance"], "10.0.0.7:9100");
        assert_eq!(out["series"][0]["labels"]["instance"], "10.64.2.14:8443", "a pod's own address is not a node's name");
        assert_eq!(out["series"][0]["labels"]["node"], "n1", "kube-state-metrics' node label stays");
        let truth = json!({"member_series": {"series:node_load1{instance=\"n1\",job=\"node-exporter\"}": "x"}, "alert": {"instance": "n1"}});
        assert_eq!(
            a.value(&truth),
            json!({"member_series": {"series:node_load1{instance=\"10.0.0.7:9100\",job=\"node-exporter\"}": "x"}, "alert": {"instance": "10.0.0.7:9100"}})
        );
    }

    #[test]
    fn thinning_keeps_one_sample_in_k_and_every_staleness_marker() {
        let mut line = json!({"kind": "remote_write", "series": [{"labels": {}, "samples": [[0, 1.0], [15000, 2.0], [30000, 3.0], [45000, "stale"], [60000, 5.0]]}]});
        thin(&mut line, 15_000, 2);
        assert_eq!(line["series"][0]["samples"], json!([[0, 1.0], [30000, 3.0], [45000, "stale"], [60000, 5.0]]));
    }
}
