"""Checks a rendered kustomization (kubectl kustomize output) for what a platform engineer
relies on: run by .ci/validate-deploy.

    check-rendered.py closed RENDERED.yaml   both servers mount TLS and a callers file from
                                             Secrets and point their variables at them;
                                             token-service calls conversation-service over
                                             https; no Secret carries a placeholder
    check-rendered.py options RENDERED.yaml  no container gets a variable its binary does
                                             not read (from the `env = "..."` of the sources)
    check-rendered.py scrape RENDERED.yaml   each server's Service lists the admin port
                                             (METRICS_ADDR) with prometheus.io annotations
                                             that name it; a StatefulSet's serviceName is a
                                             headless Service

Exits 1 with one line per finding.
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Read by libraries rather than declared in our flags, or used only to build another
# variable's value in the manifest ($(HOST_IP)).
STANDARD = re.compile(r"^(RUST_LOG|RUST_BACKTRACE|OTEL_[A-Z_]+|HOST_IP)$")
PLACEHOLDER = re.compile(r"CHANGE_?ME|REPLACE_?ME|placeholder", re.IGNORECASE)
SERVERS = ("conversation-service", "token-service")


def flags(binary):
    """The environment variables a binary reads: its crate's and chat-common's."""
    names = set()
    for crate in (binary, "common"):
        for source in (ROOT / crate / "src").rglob("*.rs"):
            names.update(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', source.read_text()))
    return names


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def pods(docs):
    """(kind/name, pod spec) of every workload."""
    for doc in docs:
        spec = doc.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            yield f"{doc['kind']}/{doc['metadata']['name']}", template["spec"]


def env_of(container, docs):
    """The container's variables: its own env, and every key of the ConfigMaps and
    Secrets it takes whole with envFrom."""
    names = {e["name"]: e for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        for doc in docs:
            if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"] == ref.get("name"):
                for key in {**doc.get("data", {}), **doc.get("stringData", {})}:
                    names.setdefault(key, {"name": key})
    return names


def binary_of(container):
    image = container.get("image", "")
    return next((b for b in SERVERS if b in image), None)


def check_closed(docs):
    problems = []
    for doc in docs:
        if doc["kind"] == "Secret":
            values = {**doc.get("stringData", {}), **doc.get("data", {})}
            for key, value in values.items():
                if PLACEHOLDER.search(str(value)):
                    problems.append(f"Secret/{doc['metadata']['name']}: {key} is a placeholder")
    servers = {}
    for where, spec in pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("containers", []):
            binary = binary_of(container)
            if binary is None or container.get("args"):
                continue  # not a server (the migrate Job runs `migrate`)
            servers[binary] = where
            env = env_of(container, docs)
            mounts = container.get("volumeMounts", [])
            for variable in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "CALLERS_FILE"):
                value = env.get(variable, {}).get("value")
                if not value:
                    problems.append(f"{where}: {variable} is not set")
                    continue
                mount = next(
                    (m for m in mounts if value.startswith(m["mountPath"].rstrip("/") + "/")), None
                )
                if mount is None:
                    problems.append(f"{where}: {variable}={value} is on no mounted volume")
                    continue
                if "subPath" in mount:
                    problems.append(f"{where}: {variable} is a subPath mount, which never updates")
                volume = volumes.get(mount["name"], {})
                if "secret" not in volume:
                    problems.append(f"{where}: {variable} is not mounted from a Secret")
            if binary == "token-service":
                url = env.get("CONVERSATION_SERVICE_URL", {}).get("value", "")
                if not url.startswith("https://"):
                    problems.append(f"{where}: CONVERSATION_SERVICE_URL {url!r} is not https")
                for variable in ("CONVERSATION_SERVICE_CA", "CONVERSATION_SERVICE_CLIENT_CERT",
                                 "CONVERSATION_SERVICE_CLIENT_KEY"):
                    if variable not in env:
                        problems.append(f"{where}: {variable} is not set")
    for binary in SERVERS:
        if binary not in servers:
            problems.append(f"no workload runs {binary}")
    return problems


def check_options(docs):
    problems = []
    known = {binary: flags(binary) for binary in SERVERS}
    for where, spec in pods(docs):
        for container in spec.get("containers", []):
            binary = binary_of(container)
            if binary is None:
                continue
            for name in env_of(container, docs):
                if name not in known[binary] and not STANDARD.match(name):
                    problems.append(f"{where}: {name} is not an option of {binary}")
    return problems


def check_scrape(docs):
    problems = []
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for where, spec in pods(docs):
        for container in spec.get("containers", []):
            binary = binary_of(container)
            if binary is None or container.get("args"):
                continue
            metrics = env_of(container, docs).get("METRICS_ADDR", {}).get("value", "")
            port = metrics.rpartition(":")[2]
            if not port.isdigit():
                problems.append(f"{where}: METRICS_ADDR {metrics!r} names no port")
                continue
            service = services.get(binary)
            if service is None:
                problems.append(f"no Service {binary}")
                continue
            ports = {str(p.get("port")): p for p in service["spec"].get("ports", [])}
            if port not in ports:
                problems.append(f"Service/{binary}: the admin port {port} is not listed")
            notes = service["metadata"].get("annotations", {})
            wanted = {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                      "prometheus.io/path": "/metrics"}
            for key, value in wanted.items():
                if notes.get(key) != value:
                    problems.append(f"Service/{binary}: {key} is {notes.get(key)!r}, not {value!r}")
    for doc in docs:
        if doc["kind"] == "StatefulSet":
            governing = services.get(doc["spec"].get("serviceName"), {})
            if governing.get("spec", {}).get("clusterIP") != "None":
                problems.append(f"StatefulSet/{doc['metadata']['name']}: serviceName is not "
                                "a headless Service")
    return problems


def main():
    mode, path = sys.argv[1], sys.argv[2]
    docs = load(path)
    checks = {"closed": check_closed, "options": check_options, "scrape": check_scrape}
    problems = checks[mode](docs)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
