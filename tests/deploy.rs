//! The deployment files under `scripts/deploy/`: the systemd unit, the Dockerfile and the
//! Kubernetes manifests, read as the tools that use them would and checked against ballast
//! and against each other. The ConfigMap's configuration goes through the real
//! `ballast --check`; the Deployment's ports and probes must be the ones that configuration
//! listens on; the Service must reach the listener; the headless Service must be the host
//! name the configuration's backend resolves; the grace periods must nest; the unit must
//! carry its keys and, where `systemd-analyze` is installed, pass `systemd-analyze verify`;
//! the image must build both binaries and run them as a non-root user.
//!
//! No Docker engine or Kubernetes cluster is needed (nor used): the image and the
//! manifests are checked as files.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ballast::config::{BackendAddr, Config, DEFAULT_GRACE};
use ballast::selection::Algorithm;
use common::dns::DnsServer;
use common::{BALLAST, TempDir};
use yaml_rust2::{Yaml, YamlLoader};

/// Where the deployment files are, relative to the repository's root.
const DEPLOY: &str = "scripts/deploy";

/// The configuration path every deployment uses: the unit, the image and the pods.
const CONFIG_PATH: &str = "/etc/ballast/balancer.ron";

/// The image's user and group (distroless's `nonroot`), which the pods run as too.
const IMAGE_UID: i64 = 65532;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of the file at `rel`, relative to the repository's root.
fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------
// YAML

/// Every document of the manifest `name` under `scripts/deploy/kubernetes/`.
fn manifest(name: &str) -> Vec<Yaml> {
    let rel = format!("{DEPLOY}/kubernetes/{name}");
    YamlLoader::load_from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

/// The node at `path` under `node`: mapping keys and sequence indexes, separated by dots
/// (`spec.template.spec.containers.0`). Panics, naming `what` and the path, when absent.
fn at<'a>(node: &'a Yaml, what: &str, path: &str) -> &'a Yaml {
    let mut here = node;
    for key in path.split('.') {
        here = match key.parse::<usize>() {
            Ok(index) => &here[index],
            Err(_) => &here[key],
        };
        assert!(
            !here.is_badvalue(),
            "{what}: no `{path}` (missing at `{key}`)"
        );
    }
    here
}

fn text<'a>(node: &'a Yaml, what: &str, path: &str) -> &'a str {
    let value = at(node, what, path);
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a string: {value:?}"))
}

fn int(node: &Yaml, what: &str, path: &str) -> i64 {
    let value = at(node, what, path);
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not an integer: {value:?}"))
}

fn list<'a>(node: &'a Yaml, what: &str, path: &str) -> &'a [Yaml] {
    let value = at(node, what, path);
    value
        .as_vec()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a list: {value:?}"))
}

/// A list of strings, as in `args` or `capabilities.drop`.
fn strings(node: &Yaml, what: &str, path: &str) -> Vec<String> {
    list(node, what, path)
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what}: `{path}` holds a non-string {v:?}"))
                .to_string()
        })
        .collect()
}

/// A mapping of strings to strings, as labels and selectors are, sorted by key.
fn labels(node: &Yaml, what: &str, path: &str) -> Vec<(String, String)> {
    let value = at(node, what, path);
    let hash = value
        .as_hash()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a mapping: {value:?}"));
    let mut pairs: Vec<(String, String)> = hash
        .iter()
        .map(|(k, v)| match (k.as_str(), v.as_str()) {
            (Some(k), Some(v)) => (k.to_string(), v.to_string()),
            _ => panic!("{what}: `{path}` holds a non-string pair {k:?}: {v:?}"),
        })
        .collect();
    pairs.sort();
    pairs
}

/// The document of `kind` named `name` among `docs`, which must hold exactly one.
fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} named {name}");
    found[0]
}

/// The one container of a Deployment's pods.
fn only_container<'a>(deployment: &'a Yaml, what: &str) -> &'a Yaml {
    let containers = list(deployment, what, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "{what}: one container");
    &containers[0]
}

/// The number of the container port `port` names: a number as is, or the `containerPort`
/// of the container's port of that name.
fn port_number(container: &Yaml, what: &str, port: &Yaml) -> i64 {
    if let Some(number) = port.as_i64() {
        return number;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{what}: a port is a number or a name, not {port:?}"));
    let ports = list(container, what, "ports");
    let found: Vec<&Yaml> = ports
        .iter()
        .filter(|p| p["name"].as_str() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "{what}: one container port named {name}");
    int(found[0], what, "containerPort")
}

/// The configuration in the ConfigMap, as text.
fn configmap_text() -> String {
    let docs = manifest("configmap.yaml");
    let map = object(&docs, "ConfigMap", "ballast-config");
    // Indexed by hand: the key has a dot, which `at` takes for a step.
    let data = at(map, "the ConfigMap", "data");
    assert_eq!(
        data.as_hash().map(|h| h.len()),
        Some(1),
        "one key: {data:?}"
    );
    data["balancer.ron"]
        .as_str()
        .expect("the ConfigMap's balancer.ron, as text")
        .to_string()
}

/// The ConfigMap's configuration, parsed and validated by ballast's own loader.
fn configmap_config() -> Config {
    Config::parse(&configmap_text(), Path::new("configmap.yaml:balancer.ron"))
        .unwrap_or_else(|e| panic!("the ConfigMap's balancer.ron: {e}"))
}

/// The port of the only listening address of service `web`.
fn web_port(config: &Config) -> i64 {
    let web = config.service("web").expect("a service named web");
    let [listen] = web.listen[..] else {
        panic!("web listens on one address: {:?}", web.listen)
    };
    i64::from(listen.port())
}

// ---------------------------------------------------------------------------------------
// The Kubernetes manifests

/// An object as `(apiVersion, kind, metadata.name)`.
type Object<'a> = (&'a str, &'a str, &'a str);

/// The directory holds these four manifests and no other file, each of the expected kinds,
/// all in one namespace.
#[test]
fn every_manifest_parses_as_yaml_of_the_expected_objects() {
    let dir = root().join(DEPLOY).join("kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("scripts/deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "backends.yaml",
            "configmap.yaml",
            "deployment.yaml",
            "service.yaml"
        ]
    );
    let expected: [(&str, &[Object]); 4] = [
        (
            "backends.yaml",
            &[
                ("v1", "Service", "web-backends"),
                ("apps/v1", "Deployment", "web-backend"),
            ],
        ),
        ("configmap.yaml", &[("v1", "ConfigMap", "ballast-config")]),
        ("deployment.yaml", &[("apps/v1", "Deployment", "ballast")]),
        ("service.yaml", &[("v1", "Service", "ballast")]),
    ];
    for (file, objects) in expected {
        let docs = manifest(file);
        let found: Vec<Object> = docs
            .iter()
            .map(|d| {
                (
                    text(d, file, "apiVersion"),
                    text(d, file, "kind"),
                    text(d, file, "metadata.name"),
                )
            })
            .collect();
        assert_eq!(found, objects, "{file}");
        for d in &docs {
            assert_eq!(text(d, file, "metadata.namespace"), "default", "{file}");
        }
    }
}

/// The ConfigMap's `balancer.ron` is what the issue asks for, and the real `ballast --check`
/// accepts it. The configuration resolves its backend with the system's resolver (in a
/// pod, the cluster DNS). Here the system's resolver points off this machine, so the test
/// changes the `dns` section alone, to send the lookups to a DNS server of its own on
/// loopback that knows the headless Service's name: `--check` then resolves it, with no
/// warning, and nothing leaves the machine.
#[tokio::test]
async fn configmap_configuration_passes_ballast_check() {
    let original = configmap_text();
    let config = configmap_config();
    assert_eq!(config.workers, 2);
    assert_eq!(config.admin, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(config.admin_token, None);
    assert_eq!(config.max_pipes, 256);
    assert!(config.dns.servers.is_empty(), "the system's resolver");
    assert_eq!(config.dns.interval, Duration::from_secs(5));
    assert_eq!(config.services.len(), 1);
    let web = &config.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.listen, ["0.0.0.0:8080".parse::<SocketAddr>().unwrap()]);
    assert_eq!(web.algorithm, Algorithm::Maglev);
    assert_eq!(web.backends.len(), 1);
    assert_eq!(web.backends[0].name, "pods");
    assert_eq!(
        web.backends[0].addr,
        BackendAddr::Name {
            host: "web-backends.default.svc.cluster.local".to_string(),
            port: 8081,
        }
    );
    assert_eq!(web.timeouts.grace, Duration::from_secs(20));

    let dns = DnsServer::start().await;
    let host = "web-backends.default.svc.cluster.local";
    let pods: [IpAddr; 2] = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    dns.set(host, &pods);
    let section = r#"dns: (interval: "5s"),"#;
    assert_eq!(
        original.matches(section).count(),
        1,
        "one `{section}` to point at the test's DNS server"
    );
    let served = original.replace(
        section,
        &format!(r#"dns: (servers: ["{}"], interval: "5s"),"#, dns.addr()),
    );
    let dir = TempDir::new();
    let path = dir.write("balancer.ron", &served);
    let path = path.to_string_lossy().into_owned();
    let run_path = path.clone();
    // `--check` blocks; the DNS server answers on this test's runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        common::run(BALLAST, &["--check", "--config", run_path.as_str()])
    })
    .await
    .expect("ballast --check");
    let (code, stdout, stderr) = out;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        stdout,
        format!(
            "{path}: configuration is valid

workers    2
admin      http://0.0.0.0:9000/
pipes      up to 256
dns        {}, every 5s

service    web
  listen     0.0.0.0:8080
  algorithm  Maglev
  backends   1
    pods  web-backends.default.svc.cluster.local:8081  weight 1  (by DNS: one backend per address)
  timeouts   connect 2s, idle 600s, half-close 60s, grace 20s
  relay      splice Auto, pipes of 1048576 bytes
  limits     10000 connections, queue 256 for up to 5s
  health     Tcp every 2s, timeout 1s, rise 2, fall 3
  access log Info
  maglev     a table of 65537 entries
",
            dns.addr()
        )
    );
    // The A and the AAAA query reached the test's server: the name was resolved there.
    assert!(dns.queries() >= 2, "{} queries", dns.queries());
}

/// The ballast Deployment runs the image's ballast on the ConfigMap with `--watch`, exposes
/// the ports the configuration listens on, probes `/readyz` and `/healthz` on its admin
/// port, and stops in time: the preStop sleep and the configuration's grace fit in the
/// termination grace period.
#[test]
fn deployment_matches_the_configuration() {
    let config = configmap_config();
    let docs = manifest("deployment.yaml");
    let d = object(&docs, "Deployment", "ballast");
    let what = "the ballast Deployment";
    assert_eq!(int(d, what, "spec.replicas"), 3);
    let pod_labels = labels(d, what, "spec.template.metadata.labels");
    assert_eq!(labels(d, what, "spec.selector.matchLabels"), pod_labels);

    // Spread over nodes: at most one replica more on any node than on another.
    let spread = list(d, what, "spec.template.spec.topologySpreadConstraints");
    let by_node: Vec<&Yaml> = spread
        .iter()
        .filter(|c| c["topologyKey"].as_str() == Some("kubernetes.io/hostname"))
        .collect();
    assert_eq!(by_node.len(), 1, "one spread over kubernetes.io/hostname");
    assert_eq!(int(by_node[0], what, "maxSkew"), 1);
    assert_eq!(text(by_node[0], what, "whenUnsatisfiable"), "DoNotSchedule");
    assert_eq!(
        labels(by_node[0], what, "labelSelector.matchLabels"),
        pod_labels
    );

    let c = only_container(d, what);
    assert_eq!(
        text(c, what, "image"),
        format!("ballast:{}", env!("CARGO_PKG_VERSION"))
    );
    // No `command`: the image's entrypoint, ballast, takes these arguments.
    assert!(c["command"].is_badvalue(), "{what}: no command");
    assert_eq!(
        strings(c, what, "args"),
        ["--config", CONFIG_PATH, "--watch"]
    );

    // The ConfigMap is mounted as the directory the configuration path is in, and its key
    // is the file's name.
    let mounts = list(c, what, "volumeMounts");
    assert_eq!(mounts.len(), 1);
    let config_dir = Path::new(CONFIG_PATH).parent().expect("a directory");
    assert_eq!(
        Path::new(text(&mounts[0], what, "mountPath")),
        config_dir,
        "mounted where --config points"
    );
    assert!(
        mounts[0]["subPath"].is_badvalue(),
        "a subPath mount is never updated"
    );
    assert_eq!(mounts[0]["readOnly"].as_bool(), Some(true));
    let volume_name = text(&mounts[0], what, "name");
    let volumes = list(d, what, "spec.template.spec.volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(text(&volumes[0], what, "name"), volume_name);
    assert_eq!(
        text(&volumes[0], what, "configMap.name"),
        text(
            object(&manifest("configmap.yaml"), "ConfigMap", "ballast-config"),
            "the ConfigMap",
            "metadata.name"
        )
    );
    let key = Path::new(CONFIG_PATH)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(key, "balancer.ron", "the ConfigMap's key");

    // Ports: the web listener and the admin listener, as the configuration has them.
    let admin_port = i64::from(config.admin.expect("an admin listener").port());
    let ports: Vec<(String, i64, String)> = list(c, what, "ports")
        .iter()
        .map(|p| {
            (
                text(p, what, "name").to_string(),
                int(p, what, "containerPort"),
                text(p, what, "protocol").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("web".to_string(), web_port(&config), "TCP".to_string()),
            ("admin".to_string(), admin_port, "TCP".to_string()),
        ]
    );
    assert_eq!(web_port(&config), 8080);
    assert_eq!(admin_port, 9000);

    // Probes: readiness on /readyz, liveness on /healthz, both on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(c, what, &format!("{probe}.httpGet"));
        assert_eq!(text(get, what, "path"), path, "{probe}");
        assert_eq!(
            port_number(c, what, at(get, what, "port")),
            admin_port,
            "{probe} on the admin port"
        );
        assert!(get["scheme"].is_badvalue(), "{probe}: plain HTTP");
    }

    // Stopping: preStop sleep, then SIGTERM and the drain of timeouts.grace, within the
    // termination grace period.
    let sleep = int(c, what, "lifecycle.preStop.sleep.seconds");
    assert_eq!(sleep, 5);
    let grace = config
        .services
        .iter()
        .map(|s| s.timeouts.grace)
        .max()
        .expect("a service");
    assert_eq!(grace, Duration::from_secs(20));
    let termination = int(d, what, "spec.template.spec.terminationGracePeriodSeconds");
    assert_eq!(termination, 30);
    assert!(
        Duration::from_secs(u64::try_from(termination).unwrap())
            > grace + Duration::from_secs(u64::try_from(sleep).unwrap()),
        "terminationGracePeriodSeconds {termination} must exceed grace {grace:?} + preStop {sleep}s"
    );

    // Resources, and a non-root, read-only, capability-free container.
    assert_eq!(text(c, what, "resources.requests.cpu"), "250m");
    assert_eq!(text(c, what, "resources.requests.memory"), "64Mi");
    assert_eq!(text(c, what, "resources.limits.memory"), "512Mi");
    assert!(
        c["resources"]["limits"]["cpu"].is_badvalue(),
        "no CPU limit (workers is set instead)"
    );
    assert_pod_is_locked_down(d, what);
}

/// Non-root as the image's user, no privilege escalation, a read-only root file system, no
/// capability, the runtime's seccomp profile and no service account token.
fn assert_pod_is_locked_down(deployment: &Yaml, what: &str) {
    let pod = at(deployment, what, "spec.template.spec");
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{what}"
    );
    assert_eq!(int(pod, what, "securityContext.runAsUser"), IMAGE_UID);
    assert_eq!(int(pod, what, "securityContext.runAsGroup"), IMAGE_UID);
    assert_eq!(
        text(pod, what, "securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    let c = only_container(deployment, what);
    let sc = at(c, what, "securityContext");
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(sc, what, "capabilities.drop"), ["ALL"]);
    assert!(
        sc["capabilities"]["add"].is_badvalue(),
        "{what}: no capability added"
    );
}

/// The load balancer Service sends port 80 to the port the web service listens on, on the
/// ballast pods, and keeps the client's address.
#[test]
fn service_reaches_the_web_listener() {
    let config = configmap_config();
    let deployments = manifest("deployment.yaml");
    let d = object(&deployments, "Deployment", "ballast");
    let docs = manifest("service.yaml");
    let s = object(&docs, "Service", "ballast");
    let what = "the ballast Service";
    assert_eq!(text(s, what, "spec.type"), "LoadBalancer");
    assert_eq!(text(s, what, "spec.externalTrafficPolicy"), "Local");
    assert_eq!(
        labels(s, what, "spec.selector"),
        labels(d, "the ballast Deployment", "spec.template.metadata.labels")
    );
    let ports = list(s, what, "spec.ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(int(&ports[0], what, "port"), 80);
    assert_eq!(text(&ports[0], what, "protocol"), "TCP");
    let target = at(&ports[0], what, "targetPort");
    assert_eq!(target.as_str(), Some("web"));
    assert_eq!(
        port_number(only_container(d, "the ballast Deployment"), what, target),
        web_port(&config)
    );
}

/// The configuration's one backend is the headless Service's cluster DNS name and port, and
/// that Service selects the demo backends, which listen on that port.
#[test]
fn backends_are_the_headless_service_the_configuration_names() {
    let config = configmap_config();
    let web = config.service("web").expect("service web");
    let BackendAddr::Name { host, port } = &web.backends[0].addr else {
        panic!("a backend by host name: {:?}", web.backends[0].addr)
    };

    let docs = manifest("backends.yaml");
    let s = object(&docs, "Service", "web-backends");
    let what = "the headless Service";
    assert_eq!(text(s, what, "spec.clusterIP"), "None");
    assert!(
        s["spec"]["type"].is_badvalue(),
        "{what}: ClusterIP, headless"
    );
    assert_eq!(
        *host,
        format!(
            "{}.{}.svc.cluster.local",
            text(s, what, "metadata.name"),
            text(s, what, "metadata.namespace")
        )
    );
    let ports = list(s, what, "spec.ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(int(&ports[0], what, "port"), i64::from(*port));

    let d = object(&docs, "Deployment", "web-backend");
    let dwhat = "the backend Deployment";
    assert_eq!(int(d, dwhat, "spec.replicas"), 3);
    let pod_labels = labels(d, dwhat, "spec.template.metadata.labels");
    assert_eq!(labels(d, dwhat, "spec.selector.matchLabels"), pod_labels);
    assert_eq!(labels(s, what, "spec.selector"), pod_labels);
    let c = only_container(d, dwhat);
    assert_eq!(
        text(c, dwhat, "image"),
        format!("ballast:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        strings(c, dwhat, "command"),
        ["/usr/local/bin/ballast-backend"]
    );
    assert!(
        dockerfile_installs().contains(&"/usr/local/bin/ballast-backend".to_string()),
        "the image has ballast-backend where the command says"
    );
    assert_eq!(
        strings(c, dwhat, "args"),
        [
            "--listen",
            format!("0.0.0.0:{port}").as_str(),
            "--id",
            "$(POD_NAME)"
        ]
    );
    assert_eq!(
        text(c, dwhat, "env.0.valueFrom.fieldRef.fieldPath"),
        "metadata.name"
    );
    assert_eq!(text(c, dwhat, "env.0.name"), "POD_NAME");
    let target = at(&ports[0], what, "targetPort");
    assert_eq!(port_number(c, dwhat, target), i64::from(*port));
    let ready = at(c, dwhat, "readinessProbe.httpGet");
    assert_eq!(text(ready, dwhat, "path"), "/");
    assert_eq!(
        port_number(c, dwhat, at(ready, dwhat, "port")),
        i64::from(*port)
    );
    // A stopping backend keeps serving while ballast's next lookups drop it: the cluster
    // DNS's cache (5 s) and the configuration's dns.interval.
    let sleep = int(c, dwhat, "lifecycle.preStop.sleep.seconds");
    assert_eq!(sleep, 10);
    assert!(Duration::from_secs(u64::try_from(sleep).unwrap()) >= 2 * config.dns.interval);
    assert_pod_is_locked_down(d, dwhat);
}

// ---------------------------------------------------------------------------------------
// The systemd unit

/// The unit's `(section, key, value)` entries in order (comments and blank lines left out;
/// the unit has no continuation lines).
fn unit_entries() -> Vec<(String, String, String)> {
    let unit = read(&format!("{DEPLOY}/ballast.service"));
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "no continuation lines: {line}");
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        entries.push((section.clone(), key.to_string(), value.to_string()));
    }
    entries
}

/// Every value of `key` in `section`.
fn unit_values(entries: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// The unit runs ballast as a notify service with its configuration checked first, reloads
/// with SIGHUP, waits out the drain, lifts the descriptor limit and sandboxes the process.
#[test]
fn systemd_unit_has_the_required_keys() {
    let entries = unit_entries();
    let sections: Vec<&str> = {
        let mut s: Vec<&str> = entries.iter().map(|(s, _, _)| s.as_str()).collect();
        s.dedup();
        s
    };
    assert_eq!(sections, ["Unit", "Service", "Install"]);
    let one = |section: &str, key: &str| -> String {
        let values = unit_values(&entries, section, key);
        assert_eq!(values.len(), 1, "one {key}= in [{section}]: {values:?}");
        values[0].clone()
    };
    for (key, value) in [
        ("Type", "notify"),
        (
            "ExecStartPre",
            "/usr/local/bin/ballast --check --config /etc/ballast/balancer.ron",
        ),
        (
            "ExecStart",
            "/usr/local/bin/ballast --config /etc/ballast/balancer.ron",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillMode", "mixed"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("LimitNOFILE", "1048576"),
        ("DynamicUser", "yes"),
        ("ConfigurationDirectory", "ballast"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(one("Service", key), value, "{key}=");
    }
    assert_eq!(
        unit_values(&entries, "Service", "SystemCallFilter"),
        ["@system-service", "~@privileged @resources"]
    );
    // A capability inside a user namespace cannot bind a low port of the host's network.
    assert!(unit_values(&entries, "Service", "PrivateUsers").is_empty());
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");
    assert_eq!(one("Unit", "After"), "network-online.target");

    // The configuration lives in the ConfigurationDirectory (/etc/NAME), as everywhere.
    let config_dir = format!("/etc/{}", one("Service", "ConfigurationDirectory"));
    assert_eq!(
        Path::new(CONFIG_PATH).parent(),
        Some(Path::new(&config_dir))
    );
    assert!(one("Service", "ExecStart").ends_with(&format!(" --config {CONFIG_PATH}")));

    // systemd waits out the default drain before it resorts to SIGKILL.
    let stop = one("Service", "TimeoutStopSec");
    let stop = ballast::config::parse_duration(&stop)
        .unwrap_or_else(|| panic!("TimeoutStopSec={stop}: not a duration ballast reads"));
    assert_eq!(stop, Duration::from_secs(30));
    assert!(
        stop > DEFAULT_GRACE,
        "TimeoutStopSec {stop:?} must exceed the default timeouts.grace {DEFAULT_GRACE:?}"
    );
}

/// `systemd-analyze verify` accepts the unit, with the built ballast standing in for
/// /usr/local/bin/ballast (verify requires every command to exist). Skipped, with a note,
/// where systemd-analyze is not installed.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    assert!(version.status.success());
    let unit = read(&format!("{DEPLOY}/ballast.service"));
    assert_eq!(unit.matches("/usr/local/bin/ballast ").count(), 2);
    let dir = TempDir::new();
    let path = dir.write(
        "ballast.service",
        &unit.replace("/usr/local/bin/ballast ", &format!("{BALLAST} ")),
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(format!("{stdout}{stderr}"), "", "no warning");
}

// ---------------------------------------------------------------------------------------
// The Dockerfile

/// The Dockerfile's instructions as `(INSTRUCTION, arguments)`, continuation lines joined,
/// comments and parser directives left out.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&format!("{DEPLOY}/Dockerfile"));
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head.trim());
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (name, args) = pending
            .split_once(' ')
            .unwrap_or_else(|| panic!("an instruction with arguments: {pending}"));
        instructions.push((name.to_string(), args.trim().to_string()));
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside an instruction"
    );
    instructions
}

/// Where the final stage puts files: the last argument of each COPY in it, joined with
/// each file copied when it is a directory (ending in `/`).
fn dockerfile_installs() -> Vec<String> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|(name, _)| name == "FROM")
        .expect("a FROM");
    let mut installed = Vec::new();
    for (name, args) in &instructions[last_from..] {
        if name != "COPY" {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY SRC... DEST");
        for source in sources {
            if let Some(dir) = dest.strip_suffix('/') {
                let file = Path::new(source).file_name().unwrap().to_str().unwrap();
                installed.push(format!("{dir}/{file}"));
            } else {
                installed.push((*dest).to_string());
            }
        }
    }
    installed
}

/// The image builds both binaries with Cargo.lock in a Rust stage and copies them into a
/// distroless runtime stage that runs ballast as a non-root user on the mounted
/// configuration, exposing the ConfigMap's ports.
#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let instructions = dockerfile();
    let of = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert_eq!(
        of("FROM"),
        [
            "rust:${RUST_VERSION}-bookworm AS build",
            "gcr.io/distroless/cc-debian12:nonroot"
        ]
    );
    // The builder's toolchain is at least the crate's rust-version.
    let arg = instructions[0].clone();
    assert_eq!(arg.0, "ARG", "RUST_VERSION comes first, before any FROM");
    let rust = arg
        .1
        .strip_prefix("RUST_VERSION=")
        .expect("ARG RUST_VERSION=...");
    let version = |v: &str| -> (u32, u32) {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().expect("a number"));
        (parts.next().unwrap(), parts.next().unwrap())
    };
    assert!(
        version(rust) >= version(env!("CARGO_PKG_RUST_VERSION")),
        "the builder's Rust {rust} is older than rust-version"
    );

    let runs = of("RUN");
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].contains(
            "cargo build --release --locked --bin ballast --bin ballast-backend && install -D -m 0755 -t /out target/release/ballast target/release/ballast-backend"
        ),
        "{}",
        runs[0]
    );
    let last_from = instructions
        .iter()
        .rposition(|(name, _)| name == "FROM")
        .unwrap();
    let runtime: Vec<(&str, &str)> = instructions[last_from + 1..]
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        runtime,
        [
            (
                "COPY",
                "--from=build /out/ballast /out/ballast-backend /usr/local/bin/"
            ),
            ("EXPOSE", "8080 9000"),
            ("STOPSIGNAL", "SIGTERM"),
            ("USER", "65532:65532"),
            ("ENTRYPOINT", r#"["/usr/local/bin/ballast"]"#),
            ("CMD", r#"["--config", "/etc/ballast/balancer.ron"]"#),
        ]
    );
    assert_eq!(
        dockerfile_installs(),
        ["/usr/local/bin/ballast", "/usr/local/bin/ballast-backend"]
    );

    // The last USER is a numeric non-root uid and gid, the pods' (runAsNonRoot needs a
    // number to check).
    let user = *of("USER").last().expect("a USER");
    let (uid, gid) = user.split_once(':').expect("UID:GID");
    assert_eq!(uid.parse::<i64>(), Ok(IMAGE_UID));
    assert_eq!(gid.parse::<i64>(), Ok(IMAGE_UID));
    assert_ne!(IMAGE_UID, 0);

    // The exposed ports are the ConfigMap's listener and admin ports.
    let config = configmap_config();
    assert_eq!(
        of("EXPOSE"),
        [format!(
            "{} {}",
            web_port(&config),
            config.admin.expect("admin").port()
        )]
    );

    // The build context leaves out the build output and the history.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(patterns, ["/target", "/target-old", "/.git"]);
}

// ---------------------------------------------------------------------------------------
// README.md

/// README.md has a Deploying section, and its Layout lists every deployment file and this
/// test.
#[test]
fn readme_layout_lists_the_deployment_files() {
    let readme = read("README.md");
    let start = readme.find("\n## Layout\n").expect("a Layout section");
    let layout = &readme[start..];
    let layout = &layout[..layout[1..].find("\n## ").map_or(layout.len(), |e| e + 1)];
    for file in [
        ".dockerignore",
        "scripts/deploy/ballast.service",
        "scripts/deploy/Dockerfile",
        "scripts/deploy/kubernetes/configmap.yaml",
        "scripts/deploy/kubernetes/deployment.yaml",
        "scripts/deploy/kubernetes/service.yaml",
        "scripts/deploy/kubernetes/backends.yaml",
        "`deploy.rs`",
    ] {
        assert!(
            layout.contains(file),
            "README.md's Layout does not list {file}"
        );
    }
    let deploying = readme
        .find("\n## Deploying\n")
        .expect("a Deploying section");
    assert!(deploying < start, "Deploying comes before Layout");
}
