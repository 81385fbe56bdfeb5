"""Checks of the Kubernetes manifests, run by tests/tests/k8s_manifests.rs.

  check_manifests.py validate VERSION FILE...
      every resource of every file is valid for Kubernetes VERSION ("latest": the newest
      kubernetes-validate knows), strictly (unknown fields are errors)
  check_manifests.py match RENDERED DRAIN_GRACE_SECONDS DESCRIBE.json...
      every modelperf Deployment of the rendered overlay runs a binary that describes itself in
      one of the DESCRIBE files (`<binary> --print-config-keys`), on the port, probe paths and
      environment keys that binary declares, with a grace period longer than its drain; its
      Service scrapes that port and metrics path; every described binary has a Deployment

Prints one line per problem and exits 1 when there is any.
"""

import json
import sys

import kubernetes_validate
import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate(version, paths):
    if version == "latest":
        version = kubernetes_validate.latest_version()
    problems = []
    count = 0
    for path in paths:
        for doc in load(path):
            count += 1
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{name}: {'.'.join(str(p) for p in e.path)}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                problems.append(f"{name}: no schema for Kubernetes {version}: {e}")
    if count == 0:
        problems.append(f"no resources in {paths}")
    print(f"validated {count} resources against Kubernetes {version}")
    return problems


def match(rendered, drain_grace, describe_paths):
    docs = load(rendered)
    described = {}
    for path in describe_paths:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        described[d["binary"]] = d
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    problems = []
    seen = set()
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            command = c.get("command") or []
            if not command or not command[0].startswith("modelperf"):
                continue
            where = f"Deployment {name}, container {c['name']}"
            binary = command[0]
            d = described.get(binary)
            if d is None:
                problems.append(f"{where}: runs {binary!r}, which is none of {sorted(described)}")
                continue
            seen.add(binary)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if ports.get("http") != d["http"]["port"]:
                problems.append(f"{where}: port http is {ports.get('http')}, {binary} listens on {d['http']['port']}")
            for probe, path_key in (("readinessProbe", "readiness"), ("livenessProbe", "liveness")):
                get = (c.get(probe) or {}).get("httpGet")
                if not get:
                    problems.append(f"{where}: no HTTP {probe}")
                    continue
                if get.get("path") != d["http"][path_key]:
                    problems.append(f"{where}: {probe} path {get.get('path')!r}, {binary} serves {path_key} on {d['http'][path_key]!r}")
                if get.get("port") not in ("http", d["http"]["port"]):
                    problems.append(f"{where}: {probe} port {get.get('port')!r} is not the http port")
            declared = set(d["env"]) | set(d.get("env_other", []))
            names = [(e["name"], "env") for e in c.get("env", [])]
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref is None:
                    problems.append(f"{where}: envFrom other than a ConfigMap cannot be checked: {source}")
                    continue
                if ref not in configmaps:
                    problems.append(f"{where}: envFrom ConfigMap {ref} is not in the overlay")
                    continue
                names += [(k, f"ConfigMap {ref}") for k in configmaps[ref]]
            for key, origin in names:
                if key not in declared:
                    problems.append(f"{where}: {key} (from {origin}) is not a key {binary} declares")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= drain_grace:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} is not longer than the drain grace {drain_grace} s")
            svc = services.get(name)
            if svc is None:
                problems.append(f"{where}: no Service {name}")
                continue
            ann = svc["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(d["http"]["port"]) \
                    or ann.get("prometheus.io/path") != d["http"]["metrics"]:
                problems.append(f"Service {name}: scrape annotations {ann} do not match {binary}'s port {d['http']['port']} and {d['http']['metrics']}")
            svc_ports = {p.get("name"): p for p in svc["spec"]["ports"]}
            if svc_ports.get("http", {}).get("port") != d["http"]["port"]:
                problems.append(f"Service {name}: port http is not {d['http']['port']}")
    for binary in sorted(set(described) - seen):
        problems.append(f"no Deployment runs {binary}")
    print(f"matched {len(seen)} services of {rendered} against their binaries")
    return problems


def main(argv):
    if len(argv) >= 3 and argv[1] == "validate":
        problems = validate(argv[2], argv[3:])
    elif len(argv) >= 5 and argv[1] == "match":
        problems = match(argv[2], float(argv[3]), argv[4:])
    else:
        print(__doc__)
        return 2
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
