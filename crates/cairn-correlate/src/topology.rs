//! What the correlator knows of the system's shape: services and who calls whom, pods and the
//! node and workload each belongs to, nodes, and the per-node agents (node-exporter and other
//! DaemonSets). Part comes from configuration (`[[topology]]`), the rest is learnt from the series
//! themselves: service-graph series (`client`/`server` labels), `kube_pod_info`-style series
//! (`pod`, `node`, `created_by_kind`, `created_by_name`, and the node's address: `host_ip`, or
//! `kube_node_info`'s `internal_ip`) and series whose `instance` is a node, by name or address.
//!
//! It also answers the question every signal raises first: which entity is this about
//! ([`Topology::resolve`]). Bounded: at most `max_entries` pods, services, nodes, node addresses
//! and agents together; beyond that new ones are counted and not learnt.

use cairn_types::Labels;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};

/// One service as an operator configures it: `[[topology]] name = "checkout" depends_on = ["payments"]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    /// The services it calls.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Pod {
    service: Option<String>,
    node: Option<String>,
}

/// The entity a signal is about, and the node its pod runs on when it is about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// `service:<name>`, `node:<name>`, `fleet:<name>` (a per-node agent) or `other:<name>`.
    pub entity: String,
    /// `node:<name>` when the signal is about one pod (or container) and its node is known.
    pub node: Option<String>,
}

#[derive(Debug)]
pub struct Topology {
    services: HashSet<String>,
    /// client → servers.
    calls: HashMap<String, BTreeSet<String>>,
    /// server → clients.
    callers: HashMap<String, BTreeSet<String>>,
    pods: HashMap<String, Pod>,
    nodes: HashSet<String>,
    /// A node's address (`host_ip` of the pods on it) → the node: a per-node agent scraped at its
    /// node's address (`instance="10.0.0.7:9100"`, plain `kubernetes_sd`) is about that node.
    node_at: HashMap<String, String>,
    agents: HashSet<String>,
    /// Services that serve a DNS server's metrics (CoreDNS, kube-dns): the cluster's resolvers.
    dns: BTreeSet<String>,
    max_entries: usize,
    refused: u64,
}

/// The host part of an `instance` label (`10.0.0.1:9100` → `10.0.0.1`, `node-a` → `node-a`).
fn host(instance: &str) -> &str {
    match instance.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => instance,
    }
}

/// The workload a ReplicaSet belongs to: `checkout-7f9c5d` → `checkout`.
fn replicaset_owner(name: &str) -> &str {
    name.rsplit_once('-').map(|(d, _)| d).unwrap_or(name)
}

impl Topology {
    pub fn new(config: &[ServiceDef], max_entries: usize) -> Topology {
        let mut t = Topology {
            services: HashSet::new(),
            calls: HashMap::new(),
            callers: HashMap::new(),
            pods: HashMap::new(),
            nodes: HashSet::new(),
            node_at: HashMap::new(),
            agents: HashSet::new(),
            dns: BTreeSet::new(),
            max_entries,
            refused: 0,
        };
        for s in config {
            t.services.insert(s.name.clone());
            for d in &s.depends_on {
                t.services.insert(d.clone());
                t.edge(&s.name, d);
            }
        }
        t
    }

    fn entries(&self) -> usize {
        self.services.len() + self.pods.len() + self.nodes.len() + self.node_at.len() + self.agents.len()
    }

    fn room(&mut self) -> bool {
        if self.entries() >= self.max_entries {
            self.refused += 1;
            return false;
        }
        true
    }

    fn edge(&mut self, client: &str, server: &str) {
        if client == server {
            return;
        }
        if self.calls.get(client).is_some_and(|s| s.contains(server)) {
            return;
        }
        self.calls.entry(client.to_string()).or_default().insert(server.to_string());
        self.callers.entry(server.to_string()).or_default().insert(client.to_string());
    }

    fn add_service(&mut self, s: &str) {
        if !self.services.contains(s) && self.room() {
            self.services.insert(s.to_string());
        }
    }

    /// Learns what one series shows of the topology. `label` looks up one label of the series.
    pub fn learn<'a>(&mut self, label: impl Fn(&str) -> Option<&'a str>) {
        if let (Some(client), Some(server)) = (label("client"), label("server"))
            && !client.is_empty() && !server.is_empty() && !self.calls.get(client).is_some_and(|s| s.contains(server)) {
                self.add_service(client);
                self.add_service(server);
                if self.services.contains(client) && self.services.contains(server) {
                    self.edge(client, server);
                }
            }
        let node = label("node").filter(|n| !n.is_empty());
        if let Some(n) = node
            && !self.nodes.contains(n) && self.room() {
                self.nodes.insert(n.to_string());
            }
        // `host_ip` on kube_pod_info, `internal_ip` on kube_node_info; looked up only on series
        // that name a node.
        if let Some(n) = node
            && let Some(ip) = label("host_ip").or_else(|| label("internal_ip")).filter(|ip| !ip.is_empty())
            && self.node_at.get(ip).is_none_or(|known| known != n)
            && (self.node_at.contains_key(ip) || self.room())
        {
            self.node_at.insert(ip.to_string(), n.to_string());
        }
        if let (Some(pod), Some(kind), Some(owner)) = (label("pod"), label("created_by_kind"), label("created_by_name")) {
            let service = match kind {
                "ReplicaSet" => Some(replicaset_owner(owner)),
                "DaemonSet" => None,
                _ => Some(owner),
            };
            if kind == "DaemonSet" && !self.agents.contains(owner) && self.room() {
                self.agents.insert(owner.to_string());
            }
            if let Some(s) = service {
                self.add_service(s);
            }
            let known = self.pods.get(pod).is_some_and(|p| p.node.as_deref() == node && p.service.as_deref() == service);
            if !known && (self.pods.contains_key(pod) || self.room()) {
                let p = Pod { service: service.map(String::from), node: node.map(String::from) };
                self.pods.insert(pod.to_string(), p);
            }
        }
        // A known service serving CoreDNS's (or kube-dns's) metrics is a resolver of the cluster.
        // The name first: it rules out almost every sample without a lookup.
        if label("__name__").is_some_and(|n| n.contains("dns") && ["coredns", "kubedns", "skydns"].iter().any(|d| n.contains(d)))
            && let Some(svc) = label("service")
            && self.services.contains(svc)
            && !self.dns.contains(svc)
        {
            self.dns.insert(svc.to_string());
        }
        if let (Some(instance), Some(job)) = (label("instance"), label("job"))
            && !self.agents.contains(job) && self.node_of_instance(instance).is_some() && self.room() {
                self.agents.insert(job.to_string());
            }
    }

    /// The node an `instance` is, by its host part: a node's name, or a node's address.
    fn node_of_instance(&self, instance: &str) -> Option<&str> {
        let h = host(instance);
        self.nodes.get(h).or_else(|| self.node_at.get(h)).map(String::as_str)
    }

    /// Pods, services, nodes, node addresses and agents known, and how many were refused for room.
    pub fn size(&self) -> (usize, u64) {
        (self.entries(), self.refused)
    }

    fn is_service(&self, s: &str) -> bool {
        self.services.contains(s) || (self.services.is_empty() && !self.agents.contains(s))
    }

    /// The service a pod belongs to: learnt, else guessed from its name (`name-<rs>-<id>`,
    /// `name-<ordinal>`) when that names a known service.
    fn pod_service(&self, pod: &str) -> Option<String> {
        if let Some(s) = self.pods.get(pod).and_then(|p| p.service.clone()) {
            return Some(s);
        }
        let mut name = pod;
        for _ in 0..2 {
            name = name.rsplit_once('-')?.0;
            if self.services.contains(name) {
                return Some(name.to_string());
            }
        }
        None
    }

    /// The known service an object or host is named after: the longest service name that `name`
    /// starts with, followed by `-`, `.` or nothing (`checkout-config`, `checkout-tls`,
    /// `checkout.example.org` → `checkout`). Kubernetes objects of a workload carry its name by
    /// convention; so does a service's public host.
    fn named_after(&self, name: &str) -> Option<&str> {
        let cuts = name.char_indices().filter(|(_, c)| *c == '-' || *c == '.').map(|(i, _)| i).chain([name.len()]);
        let mut best = None;
        for end in cuts {
            if let Some(s) = self.services.get(&name[..end]) {
                best = Some(s.as_str());
            }
        }
        best
    }

    /// The service a signal names through one of its objects (a ConfigMap, a Secret, a
    /// certificate, a volume claim, a Job) or a probe's target host (`instance` as a URL or a
    /// host name), when no label says it outright; a DNS probe (blackbox's `dns` modules) is
    /// about the cluster's resolver when it has one.
    fn object_service(&self, l: &Labels) -> Option<&str> {
        let dns_probe = l.get("module").is_some_and(|m| m.starts_with("dns")) || l.get("__name__").is_some_and(|n| n.starts_with("probe_dns"));
        if dns_probe && self.dns.len() == 1 {
            return self.dns.first().map(String::as_str);
        }
        const OBJECTS: [&str; 7] = ["configmap", "secret", "certificate", "name", "persistentvolumeclaim", "job_name", "ingress"];
        if let Some(s) = OBJECTS.iter().filter_map(|k| l.get(k)).find_map(|v| self.named_after(v)) {
            return Some(s);
        }
        let instance = l.get("instance")?;
        let target = instance.split_once("://").map_or(instance, |(_, rest)| rest);
        let host = host(target.split('/').next().unwrap_or_default());
        // A host name, not an address.
        if host.contains('.') && !host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return host.split_once('.').and_then(|(first, _)| self.services.get(first)).map(String::as_str);
        }
        None
    }

    /// Which entity a signal with these labels is about. In order: a `service` label naming a
    /// service; the service owning its `pod`; its `deployment`, `statefulset`,
    /// `horizontalpodautoscaler` or `client`; a `daemonset` (a fleet); its `node`, or an
    /// `instance` that is a node (by name or address); a per-node agent's `job` (a fleet); a
    /// service one of its objects or its probe's target host is named after
    /// ([`Topology::object_service`]: an exporter's own `service`, such as cert-manager's, is not
    /// what its series are about); any other `service` or a service-like `job`; else `other:` its
    /// job, instance or name.
    pub fn resolve(&self, l: &Labels) -> Resolved {
        let pod_node = || {
            let pod_node = l.get("pod").and_then(|p| self.pods.get(p)).and_then(|p| p.node.clone());
            pod_node.or_else(|| l.get("node").map(String::from)).map(|n| format!("node:{n}"))
        };
        let service = |s: &str| Resolved { entity: format!("service:{s}"), node: pod_node() };
        if let Some(s) = l.get("service").filter(|s| self.is_service(s)) {
            return service(s);
        }
        if let Some(s) = l.get("pod").and_then(|p| self.pod_service(p)) {
            return service(&s);
        }
        for name in ["deployment", "statefulset", "horizontalpodautoscaler", "client"] {
            if let Some(s) = l.get(name).filter(|s| !s.is_empty()) {
                return service(s);
            }
        }
        let plain = |e: String| Resolved { entity: e, node: None };
        if let Some(d) = l.get("daemonset").filter(|d| !d.is_empty()) {
            return plain(format!("fleet:{d}"));
        }
        if let Some(n) = l.get("node").filter(|n| !n.is_empty()) {
            return plain(format!("node:{n}"));
        }
        if let Some(n) = l.get("instance").and_then(|i| self.node_of_instance(i)) {
            return plain(format!("node:{n}"));
        }
        for name in ["job", "service"] {
            if let Some(j) = l.get(name).filter(|j| self.agents.contains(*j)) {
                return plain(format!("fleet:{j}"));
            }
        }
        if let Some(s) = self.object_service(l) {
            return service(s);
        }
        if let Some(s) = l.get("service").filter(|s| !s.is_empty()) {
            return service(s);
        }
        if let Some(j) = l.get("job").filter(|j| self.services.contains(*j)) {
            return service(j);
        }
        let name = ["job", "instance", "alertname", "__name__"].iter().find_map(|n| l.get(n)).unwrap_or("unknown");
        plain(format!("other:{name}"))
    }

    /// Whether `a` calls `b` or `b` calls `a` (entities as `service:<name>`).
    pub fn linked_services(&self, a: &str, b: &str) -> bool {
        let (Some(a), Some(b)) = (a.strip_prefix("service:"), b.strip_prefix("service:")) else { return false };
        self.calls.get(a).is_some_and(|s| s.contains(b)) || self.calls.get(b).is_some_and(|s| s.contains(a))
    }

    /// The services `entity` (a `service:` entity) calls and is called by, as entities.
    pub fn neighbours(&self, entity: &str) -> Vec<String> {
        let Some(s) = entity.strip_prefix("service:") else { return Vec::new() };
        let calls = self.calls.get(s).into_iter().flatten();
        let callers = self.callers.get(s).into_iter().flatten();
        calls.chain(callers).map(|n| format!("service:{n}")).collect()
    }

    /// Whether service entity `client` calls service entity `server`.
    pub fn calls(&self, client: &str, server: &str) -> bool {
        match (client.strip_prefix("service:"), server.strip_prefix("service:")) {
            (Some(c), Some(s)) => self.calls.get(c).is_some_and(|x| x.contains(s)),
            _ => false,
        }
    }

    /// The per-node agents known, as `fleet:` entities.
    pub fn agent_fleets(&self) -> impl Iterator<Item = String> + '_ {
        self.agents.iter().map(|a| format!("fleet:{a}"))
    }

    /// Whether `fleet` (a `fleet:` entity) is an agent that runs on every node.
    pub fn is_agent(&self, fleet: &str) -> bool {
        fleet.strip_prefix("fleet:").is_some_and(|f| self.agents.contains(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    fn learn(t: &mut Topology, pairs: &[(&str, &str)]) {
        let l = labels(pairs);
        t.learn(|n| l.get(n));
    }

    fn cluster() -> Topology {
        let mut t = Topology::new(&[ServiceDef { name: "web".into(), depends_on: vec!["api".into()] }], 1000);
        learn(&mut t, &[("__name__", "kube_pod_info"), ("pod", "api-5d8f9-x2x"), ("node", "n1"), ("created_by_kind", "ReplicaSet"), ("created_by_name", "api-5d8f9")]);
        learn(&mut t, &[("__name__", "kube_pod_info"), ("pod", "db-0"), ("node", "n2"), ("created_by_kind", "StatefulSet"), ("created_by_name", "db")]);
        learn(&mut t, &[("__name__", "kube_pod_info"), ("pod", "node-exporter-abc"), ("node", "n2"), ("created_by_kind", "DaemonSet"), ("created_by_name", "node-exporter")]);
        learn(&mut t, &[("__name__", "graph"), ("client", "api"), ("server", "db")]);
        learn(&mut t, &[("__name__", "node_load1"), ("instance", "n1:9100"), ("job", "node-exporter"), ("service", "node-exporter")]);
        t
    }

    #[test]
    fn signals_resolve_to_the_entity_they_are_about() {
        let t = cluster();
        let r = |pairs: &[(&str, &str)]| t.resolve(&labels(pairs));
        assert_eq!(r(&[("service", "api"), ("pod", "api-5d8f9-x2x")]), Resolved { entity: "service:api".into(), node: Some("node:n1".into()) });
        assert_eq!(r(&[("pod", "db-0"), ("container", "pg")]).entity, "service:db", "a pod's service from kube_pod_info");
        assert_eq!(r(&[("pod", "api-5d8f9-new1")]).entity, "service:api", "a replacement pod by its name");
        assert_eq!(r(&[("deployment", "api")]).entity, "service:api");
        assert_eq!(r(&[("node", "n1"), ("condition", "Ready")]).entity, "node:n1");
        assert_eq!(r(&[("instance", "n1"), ("job", "node-exporter"), ("service", "node-exporter")]).entity, "node:n1", "node-exporter series are about their node");
        assert_eq!(r(&[("job", "node-exporter"), ("service", "node-exporter")]).entity, "fleet:node-exporter");
        assert_eq!(r(&[("daemonset", "node-exporter")]).entity, "fleet:node-exporter");
        assert_eq!(r(&[("alertname", "Watchdog")]).entity, "other:Watchdog");
    }

    #[test]
    fn an_agent_scraped_at_its_nodes_address_is_about_that_node() {
        // Plain kubernetes_sd: node-exporter's instance is the node's address, not its name.
        let mut t = Topology::new(&[], 1000);
        learn(&mut t, &[("__name__", "kube_pod_info"), ("pod", "api-5d8f9-x2x"), ("node", "n1"), ("host_ip", "10.0.0.7"), ("pod_ip", "10.64.1.3"), ("created_by_kind", "ReplicaSet"), ("created_by_name", "api-5d8f9")]);
        learn(&mut t, &[("__name__", "node_load1"), ("instance", "10.0.0.7:9100"), ("job", "node-exporter"), ("service", "node-exporter")]);
        let r = |pairs: &[(&str, &str)]| t.resolve(&labels(pairs)).entity;
        assert_eq!(r(&[("__name__", "node_load1"), ("instance", "10.0.0.7:9100"), ("job", "node-exporter"), ("service", "node-exporter")]), "node:n1");
        assert_eq!(r(&[("alertname", "NodeFilesystemSpaceFillingUp"), ("instance", "10.0.0.7:9100"), ("job", "node-exporter")]), "node:n1");
        assert_eq!(r(&[("job", "node-exporter"), ("service", "node-exporter")]).as_str(), "fleet:node-exporter", "learnt as an agent from its node's address");
        assert_eq!(r(&[("instance", "10.64.1.3:8080"), ("pod", "api-5d8f9-x2x")]), "service:api", "a pod's own address is its pod's");
        assert_eq!(r(&[("instance", "10.0.0.8:9100"), ("job", "node-exporter")]), "fleet:node-exporter", "an address no pod runs at is no node");
        learn(&mut t, &[("__name__", "kube_node_info"), ("node", "n2"), ("internal_ip", "10.0.0.8")]);
        let r = |pairs: &[(&str, &str)]| t.resolve(&labels(pairs)).entity;
        assert_eq!(r(&[("instance", "10.0.0.8:9100"), ("job", "node-exporter")]), "node:n2", "kube_node_info names a node's address too");
        // A node's address moves (a node replaced at the same IP): the newest pairing holds, and
        // it takes no more room.
        learn(&mut t, &[("__name__", "kube_pod_info"), ("pod", "db-0"), ("node", "n9"), ("host_ip", "10.0.0.7"), ("created_by_kind", "StatefulSet"), ("created_by_name", "db")]);
        let r = |pairs: &[(&str, &str)]| t.resolve(&labels(pairs)).entity;
        assert_eq!(r(&[("instance", "10.0.0.7:9100"), ("job", "node-exporter")]), "node:n9");
        assert_eq!(t.node_at.len(), 2);
    }

    #[test]
    fn objects_and_probe_targets_named_after_a_service_are_about_it() {
        let t = cluster();
        let r = |pairs: &[(&str, &str)]| t.resolve(&labels(pairs)).entity;
        assert_eq!(r(&[("__name__", "kube_configmap_metadata_resource_version"), ("configmap", "api-config"), ("job", "kube-state-metrics")]), "service:api");
        // cert-manager's series carry its own `service`; the certificate is the subject.
        assert_eq!(r(&[("name", "web-example-org"), ("service", "cert-manager"), ("job", "cert-manager")]), "service:web");
        assert_eq!(r(&[("instance", "https://web.example.org/healthz"), ("job", "probe/monitoring/web-ingress")]), "service:web");
        assert_eq!(r(&[("instance", "web.example.org:443"), ("job", "blackbox")]), "service:web");
        // Only whole names at a `-` or `.`, never an address, and nothing unknown.
        assert_eq!(r(&[("configmap", "webhooks-config"), ("job", "kube-state-metrics")]), "other:kube-state-metrics");
        assert_eq!(r(&[("instance", "10.0.0.7:8080"), ("job", "probe")]), "other:probe");
        assert_eq!(r(&[("instance", "https://status.example.org/"), ("job", "probe/status")]), "other:probe/status");
        assert_eq!(r(&[("name", "cert"), ("service", "cert-manager")]), "service:cert-manager");
    }

    #[test]
    fn a_dns_probe_is_about_the_service_that_serves_coredns_metrics() {
        let mut t = cluster();
        let probe = labels(&[("__name__", "probe_success"), ("instance", "sso.internal.example.org"), ("module", "dns_udp"), ("job", "probe/dns")]);
        assert_eq!(t.resolve(&probe).entity, "other:probe/dns", "no resolver known yet");
        learn(&mut t, &[("__name__", "instance:coredns_dns_requests:rate5m"), ("service", "api"), ("pod", "api-5d8f9-x2x")]);
        assert_eq!(t.resolve(&probe).entity, "service:api");
        // An HTTP probe of the same host is not about the resolver.
        let http = labels(&[("__name__", "probe_success"), ("instance", "sso.internal.example.org"), ("module", "http_2xx"), ("job", "probe/dns")]);
        assert_eq!(t.resolve(&http).entity, "other:probe/dns");
        // Two resolvers: which one a probe asked is not known.
        learn(&mut t, &[("__name__", "coredns_dns_requests_total"), ("service", "web")]);
        assert_eq!(t.resolve(&probe).entity, "other:probe/dns");
    }

    #[test]
    fn dependencies_come_from_config_and_from_the_service_graph() {
        let t = cluster();
        assert!(t.calls("service:web", "service:api"), "configured");
        assert!(t.calls("service:api", "service:db"), "learnt");
        assert!(!t.calls("service:db", "service:api"));
        assert!(t.linked_services("service:db", "service:api"));
        assert_eq!(t.neighbours("service:api"), ["service:db", "service:web"]);
        assert!(t.is_agent("fleet:node-exporter"));
    }

    #[test]
    fn learning_is_bounded() {
        let mut t = Topology::new(&[], 10);
        for i in 0..100 {
            learn(&mut t, &[("pod", &format!("p-{i}")), ("node", "n"), ("created_by_kind", "StatefulSet"), ("created_by_name", "p")]);
        }
        let (n, refused) = t.size();
        assert_eq!(n, 10);
        assert!(refused > 0);
    }
}
