//! The deployment files say what the gateway really does: every YAML parses, every embedded
//! gateway config loads, and the ports, probe paths and signals in the Dockerfile, the compose
//! file, the Kubernetes manifests and the systemd unit match what the gateway serves. The
//! embedded configs are started for real (ports made ephemeral, the broker made local), and each
//! probe path a manifest names is fetched with `portcullis healthcheck`'s own code.
//!
//! No container engine runs on this machine, so the image itself is not built here (README).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::Config;
use support::{Broker, TestGateway};
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

/// The gateway config a manifest carries in its ConfigMap.
fn configmap_toml(docs: &[Yaml]) -> String {
    of_kind(docs, "ConfigMap")["data"]["portcullis.toml"]
        .as_str()
        .expect("the TOML in the ConfigMap")
        .to_string()
}

/// The port a listener binds, from its `bind = "host:port"`.
fn bind_port(config: &Config, listener: usize) -> u16 {
    config.listeners[listener].bind.port()
}

/// A container port: a number, or the name of one of `container`'s ports.
fn resolve_port(container: &Yaml, port: &Yaml) -> u16 {
    if let Some(n) = port.as_i64() {
        return n as u16;
    }
    let name = port.as_str().expect("port is a number or a name");
    container["ports"]
        .as_vec()
        .expect("container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

fn seconds(v: &Yaml) -> u64 {
    v.as_i64().expect("a number of seconds") as u64
}

/// The preStop `sleep N`, in seconds.
fn pre_stop_sleep(container: &Yaml) -> u64 {
    let cmd = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_vec()
        .expect("a preStop exec command");
    assert_eq!(cmd[0].as_str(), Some("sleep"), "preStop is a sleep");
    cmd[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sleep seconds")
}

/// Start `toml` with every bind made ephemeral and upstreams pointed at a local broker, then
/// GET each of `paths` on listener `listener`: what a kubelet or Docker would see.
async fn serves_200(toml: &str, listener: usize, paths: &[&str], broker: &Broker) {
    let mut config = toml.to_string();
    for port in ["0.0.0.0:8080", "0.0.0.0:8443"] {
        config = config.replace(port, "127.0.0.1:0");
    }
    for upstream in ["mosquitto.mqtt.svc.cluster.local:1883", "mosquitto:1883"] {
        config = config.replace(upstream, &broker.addr.to_string());
    }
    let mut gw = TestGateway::start(&config).await;
    for path in paths {
        let url = format!("http://{}{path}", gw.addrs[listener]);
        // /readyz waits for the first health check of the broker.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match portcullis::healthcheck::get(&url, Duration::from_secs(2)).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("{url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    gw.shutdown().await;
}

#[test]
fn every_yaml_parses() {
    for path in [
        "deploy/compose/compose.yaml",
        "deploy/k8s/portcullis.yaml",
        "deploy/k8s/portcullis-nlb.yaml",
        "profiles/envoy.yaml",
        "profiles/traefik.yml",
        "profiles/traefik-dynamic.yml",
    ] {
        assert!(!yaml(path).is_empty(), "{path} is empty");
    }
}

#[tokio::test]
async fn kubernetes_probes_ports_and_grace_match_the_gateway() {
    let docs = yaml("deploy/k8s/portcullis.yaml");
    let toml = configmap_toml(&docs);
    let config = Config::parse(&toml, None).unwrap_or_else(|e| panic!("ConfigMap TOML: {e}"));
    let port = bind_port(&config, 0);

    let pod = &of_kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let ready = &c["readinessProbe"]["httpGet"];
    let live = &c["livenessProbe"]["httpGet"];
    assert_eq!(ready["path"].as_str(), Some("/readyz"));
    assert_eq!(live["path"].as_str(), Some("/healthz"));
    assert_eq!(resolve_port(c, &ready["port"]), port);
    assert_eq!(resolve_port(c, &live["port"]), port);
    let grace = seconds(&pod["terminationGracePeriodSeconds"]);
    assert!(
        grace > pre_stop_sleep(c) + config.shutdown.drain_timeout_secs,
        "the kubelet would SIGKILL a drain in progress"
    );
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", "/etc/portcullis/portcullis.toml"]
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some("/etc/portcullis")
    );

    let service = of_kind(&docs, "Service");
    assert_eq!(
        resolve_port(c, &service["spec"]["ports"][0]["targetPort"]),
        port
    );
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));

    let broker = Broker::spawn().await;
    serves_200(&toml, 0, &["/readyz", "/healthz"], &broker).await;
}

#[tokio::test]
async fn the_nlb_variant_speaks_proxy_v2_and_probes_a_plain_listener() {
    let docs = yaml("deploy/k8s/portcullis-nlb.yaml");
    let toml = configmap_toml(&docs);
    // The certificate comes from a Secret at run time; a real one stands in for it here.
    let dir = tempfile::tempdir().unwrap();
    let leaf = support::certs::Ca::new().leaf(dir.path(), "tls", &["gw.example.test"]);
    let toml = toml
        .replace("/etc/portcullis/tls/tls.crt", leaf.cert.to_str().unwrap())
        .replace("/etc/portcullis/tls/tls.key", leaf.key.to_str().unwrap());
    let config = Config::parse(&toml, None).unwrap_or_else(|e| panic!("ConfigMap TOML: {e}"));
    let devices = config
        .listeners
        .iter()
        .position(|l| l.proxy_protocol == portcullis::config::ProxyProtocolMode::V2)
        .expect("a listener with proxy_protocol = v2");
    assert!(!config.listeners[devices].proxy_protocol_from.is_empty());
    let probes = config
        .listeners
        .iter()
        .position(|l| {
            l.proxy_protocol == portcullis::config::ProxyProtocolMode::Off && l.tls.is_none()
        })
        .expect("a plain listener for the kubelet's probes");

    let pod = &of_kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path));
        assert_eq!(
            resolve_port(c, &c[probe]["httpGet"]["port"]),
            bind_port(&config, probes)
        );
    }
    assert!(
        seconds(&pod["terminationGracePeriodSeconds"])
            > pre_stop_sleep(c) + config.shutdown.drain_timeout_secs
    );
    let service = of_kind(&docs, "Service");
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"].as_str(),
        Some("*")
    );
    assert_eq!(
        resolve_port(c, &service["spec"]["ports"][0]["targetPort"]),
        bind_port(&config, devices)
    );

    let broker = Broker::spawn().await;
    serves_200(&toml, probes, &["/readyz", "/healthz"], &broker).await;
}

#[tokio::test]
async fn compose_gateways_health_check_what_they_serve_behind_nginx() {
    let docs = yaml("deploy/compose/compose.yaml");
    let services = &docs[0]["services"];
    let toml = read("deploy/compose/gateway.toml");
    let config = Config::parse(&toml, None).unwrap_or_else(|e| panic!("gateway.toml: {e}"));
    let port = bind_port(&config, 0);
    let nginx = read("deploy/compose/nginx.conf");
    for gw in ["gw-1", "gw-2"] {
        let s = &services[gw];
        let test: Vec<&str> = s["healthcheck"]["test"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(
            test,
            [
                "CMD",
                "portcullis",
                "healthcheck",
                &format!("http://127.0.0.1:{port}/healthz")
            ]
        );
        let grace: u64 = s["stop_grace_period"]
            .as_str()
            .and_then(|g| g.trim_end_matches('s').parse().ok())
            .expect("stop_grace_period in s");
        assert!(
            grace > config.shutdown.drain_timeout_secs,
            "{gw}: docker would SIGKILL a drain"
        );
        assert_eq!(s["stop_signal"].as_str(), Some("SIGTERM"));
        let mount = s["volumes"][0].as_str().unwrap();
        assert!(
            mount.ends_with(":/etc/portcullis/portcullis.toml:ro"),
            "{mount}"
        );
        assert!(
            nginx.contains(&format!("{gw}:{port}")),
            "nginx.conf does not balance to {gw}:{port}"
        );
    }
    for needed in ["nginx", "mosquitto", "redis"] {
        assert!(!services[needed].is_badvalue(), "compose has no {needed}");
    }
    assert!(nginx.contains("proxy_set_header Upgrade $http_upgrade"));

    let broker = Broker::spawn().await;
    serves_200(&toml, 0, &["/healthz"], &broker).await;
}

#[test]
fn the_dockerfile_runs_the_gateway_as_pid_1_unprivileged_with_a_health_check() {
    let d = read("deploy/Dockerfile");
    let line = |prefix: &str| {
        d.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line"))
            .to_string()
    };
    assert!(
        d.matches("\nFROM ").count() + usize::from(d.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    // Exec form: portcullis is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert_eq!(line("ENTRYPOINT"), "ENTRYPOINT [\"portcullis\"]");
    assert_eq!(
        line("CMD [\"serve\""),
        "CMD [\"serve\",\"--config\",\"/etc/portcullis/portcullis.toml\"]"
    );
    assert_eq!(line("STOPSIGNAL"), "STOPSIGNAL SIGTERM");
    let user = line("USER ");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert_eq!(line("EXPOSE"), "EXPOSE 8080");
    assert!(d.contains("CMD [\"portcullis\",\"healthcheck\",\"http://127.0.0.1:8080/healthz\"]"));
    // The health check's port is the one the compose config binds.
    let compose = Config::parse(&read("deploy/compose/gateway.toml"), None).unwrap();
    assert_eq!(bind_port(&compose, 0), 8080);
}

#[test]
fn the_systemd_unit_is_hardened_and_outlives_a_drain() {
    let unit = read("deploy/portcullis.service");
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == setting),
            "missing {setting}"
        );
    }
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_string()
    };
    let nofile: u64 = value("LimitNOFILE=").parse().unwrap();
    assert!(nofile >= 65536, "two descriptors per device");
    let stop: u64 = value("TimeoutStopSec=").parse().unwrap();
    let defaults = Config::parse("[[listener]]\nbind = \"127.0.0.1:0\"\n", None).unwrap();
    assert!(stop > defaults.shutdown.drain_timeout_secs);
}

#[tokio::test]
async fn the_healthcheck_command_fails_on_503_and_on_a_closed_port() {
    // A route whose only upstream is closed: /readyz answers 503 once the health check runs.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&support::ws::config("", &[("mqtt", closed)])).await;
    let url = format!("http://{}/readyz", gw.addr());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let err = loop {
        match portcullis::healthcheck::get(&url, Duration::from_secs(2)).await {
            Err(e) => break e,
            Ok(()) if tokio::time::Instant::now() > deadline => panic!("{url} stayed 200"),
            Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(err.contains("503"), "{err}");
    let err =
        portcullis::healthcheck::get(&format!("http://{closed}/healthz"), Duration::from_secs(2))
            .await
            .unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");
}
