#!/usr/bin/env python3
"""Checks for the scopegate chart, used by render-and-validate.sh.

  check_rendered.py schema-meta SCHEMA
      SCHEMA is a valid JSON Schema (draft 7, what helm reads).
  check_rendered.py values SCHEMA VALUES_JSON [--expect-error TEXT]
      The merged values (render --dump-values) validate against SCHEMA, as helm checks them;
      with --expect-error, they must NOT validate, and some error must mention TEXT.
  check_rendered.py servicemonitor SCHEMA MANIFEST
      The ServiceMonitor in MANIFEST validates against SCHEMA (kubernetes-validate has none).
  check_rendered.py rendered SET OUTDIR
      Structural checks of one rendered values set (common ones and SET's own), and writes
      the scopegate configuration held by the ConfigMap to OUTDIR/scopegate.yaml.

Prints one line per check ("ok   - ..." / "FAIL - ..."); exits 1 if any failed.
"""
import base64
import hashlib
import json
import sys
from pathlib import Path

import jsonschema
import yaml

FAILED = []


def check(cond, what):
    print(("ok   - " if cond else "FAIL - ") + what)
    if not cond:
        FAILED.append(what)
    return cond


def done():
    sys.exit(1 if FAILED else 0)


# ---------------------------------------------------------------------------------------------
# Values and schemas

def cmd_schema_meta(schema_path):
    schema = json.loads(Path(schema_path).read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
        check(True, f"{schema_path} is a valid draft-07 JSON Schema")
    except jsonschema.SchemaError as e:
        check(False, f"{schema_path} is not a valid JSON Schema: {e.message}")
    check(schema.get("additionalProperties") is False, f"{schema_path}: top level refuses unknown keys")
    done()


def cmd_values(schema_path, values_path, expect_error=None):
    schema = json.loads(Path(schema_path).read_text())
    values = json.loads(Path(values_path).read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    msgs = []
    for e in errors:
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        msgs.append(f"{where}: {e.message}")
        for sub in e.context or []:
            sw = ".".join(str(p) for p in sub.absolute_path) or "(top)"
            msgs.append(f"  {sw}: {sub.message}")
    if expect_error is None:
        check(not errors, f"{values_path} validates against values.schema.json"
              + ("" if not errors else ": " + "; ".join(msgs)))
    else:
        hit = any(expect_error in m for m in msgs)
        check(bool(errors) and hit,
              f"values.schema.json refuses {values_path} mentioning {expect_error!r}"
              + (f" (errors: {'; '.join(msgs) or 'none'})"))
    done()


def cmd_servicemonitor(schema_path, manifest):
    schema = json.loads(Path(schema_path).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    docs = [d for d in yaml.safe_load_all(Path(manifest).read_text()) if d]
    sms = [d for d in docs if d.get("kind") == "ServiceMonitor"]
    check(len(sms) == 1, f"{manifest}: one ServiceMonitor")
    for sm in sms:
        errs = list(jsonschema.Draft7Validator(schema).iter_errors(sm))
        check(not errs, "ServiceMonitor validates against the CRD subset"
              + ("" if not errs else ": " + "; ".join(f"{list(e.path)}: {e.message}" for e in errs)))
    done()


# ---------------------------------------------------------------------------------------------
# Rendered manifests

ALLOWED_CONFIG = {
    "listen": None, "public_url": None, "upstream": None, "data_dir": None,
    "admin": {"listen", "token_file"},
    "token": {"service", "issuer", "lifetime_secs", "refresh_lifetime_secs", "signing_key_file"},
    "tls": {"cert_file", "key_file"},
    "upstream_tls": {"ca_file"},
    "shutdown_grace_secs": None,
    "workers": None,
    "log": {"format", "level"},
    "audit": {"output"},
    "anonymous": {"scope_map"},
    "limits": {"catalog_max_n", "tags_max_n", "manifest_max_bytes", "upstream_connect_timeout_secs", "upstream_response_timeout_secs", "max_header_bytes", "max_headers",
               "header_read_timeout_secs", "max_connections", "failed_logins"},
}
CONFIG_PATH = "/etc/scopegate/config/scopegate.yaml"


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def b64(s):
    return base64.b64encode(s.encode()).decode()


def cmd_rendered(name, outdir):
    out = Path(outdir)
    docs = [d for d in yaml.safe_load_all((out / "all.yaml").read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def one(kind, obj_name=None):
        xs = [d for d in by_kind.get(kind, []) if obj_name is None or d["metadata"]["name"] == obj_name]
        return xs[0] if len(xs) == 1 else None

    # --- labels, namespaces, names
    for d in docs:
        md = d["metadata"]
        labels = md.get("labels", {})
        missing = [k for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                               "app.kubernetes.io/managed-by", "helm.sh/chart") if k not in labels]
        check(not missing, f"{d['kind']}/{md['name']}: standard labels" + (f" (missing {missing})" if missing else ""))
        check(len(md["name"]) <= 63, f"{d['kind']}/{md['name']}: name fits 63 characters")

    dep = one("Deployment")
    if not check(dep is not None, "one Deployment"):
        done()
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    sg = containers.get("scopegate")
    if not check(sg is not None, "a container named scopegate"):
        done()
    check(dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
          "Deployment selector matches the pod labels")

    # --- security
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and "fsGroup" in psc,
          "pod: runAsNonRoot, runAsUser 65532, fsGroup")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccompProfile RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation false")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{c['name']}: drops ALL capabilities")
        check(sc.get("runAsNonRoot") is True, f"{c['name']}: runAsNonRoot")
        check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{c['name']}: seccompProfile RuntimeDefault")
    check(spec.get("automountServiceAccountToken") is False, "pod: no service account token mounted")

    # --- the scopegate container
    check(sg.get("command") == ["scopegate"] and sg.get("args") == ["serve", "--config", CONFIG_PATH],
          "scopegate serve --config " + CONFIG_PATH)
    env = env_map(sg)
    check(env.get("SCOPEGATE_CONFIG", {}).get("value") == CONFIG_PATH, "SCOPEGATE_CONFIG points at the config")
    ports = {p["name"]: p for p in sg["ports"]}
    public_name = "https" if name == "tls" else "http"
    check(ports.get(public_name, {}).get("containerPort") == 5000, f"port 5000 named {public_name}")
    check(ports.get("admin", {}).get("containerPort") == 5002, "port 5002 named admin")
    check(len(ports) == 2, "scopegate exposes two ports")
    lp, rp = sg.get("livenessProbe", {}).get("httpGet", {}), sg.get("readinessProbe", {}).get("httpGet", {})
    check(lp.get("path") == "/healthz" and lp.get("port") == "admin", "liveness GET /healthz on admin")
    check(rp.get("path") == "/readyz" and rp.get("port") == "admin", "readiness GET /readyz on admin")
    check("resources" in sg, "scopegate has resources")

    # --- volumes: every mount has a volume; remember what each mount provides
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            check(m["name"] in volumes, f"{c['name']}: mount {m['mountPath']} has volume {m['name']}")
    mounts = {m["mountPath"]: m for m in sg.get("volumeMounts", [])}

    def provides(path):
        """Volume + item key giving the file at path, or None."""
        for mp, m in mounts.items():
            if path.startswith(mp.rstrip("/") + "/"):
                rel = path[len(mp.rstrip("/")) + 1:]
                v = volumes.get(m["name"], {})
                src = v.get("secret") or v.get("configMap")
                if src is None:
                    return (m, v, None)
                items = src.get("items")
                if items is None:
                    return (m, v, rel)
                for it in items:
                    if it["path"] == rel:
                        return (m, v, it["key"])
                return None
        return None

    # --- the ConfigMap and the configuration it holds
    cm = one("ConfigMap")
    check(cm is not None and "scopegate.yaml" in cm["data"], "ConfigMap holds scopegate.yaml")
    text = cm["data"]["scopegate.yaml"]
    (out / "scopegate.yaml").write_text(text)
    cfg = yaml.safe_load(text)
    unknown = []
    for k, v in cfg.items():
        if k not in ALLOWED_CONFIG:
            unknown.append(k)
        elif ALLOWED_CONFIG[k] is not None:
            unknown += [f"{k}.{kk}" for kk in v if kk not in ALLOWED_CONFIG[k]]
    check(not unknown, "config uses only scopegate's keys" + (f" (unknown: {unknown})" if unknown else ""))
    check(cfg["listen"] == "0.0.0.0:5000" and cfg["admin"]["listen"] == "0.0.0.0:5002", "config listens on 5000 and 5002")
    check(cfg["data_dir"] == "/var/lib/scopegate" and "/var/lib/scopegate" in mounts, "data_dir is the mounted data volume")
    cfg_mount = provides(CONFIG_PATH)
    check(cfg_mount is not None and cfg_mount[1].get("configMap", {}).get("name") == cm["metadata"]["name"],
          "the config file is mounted from the ConfigMap")
    for p in [cfg["admin"].get("token_file"), cfg["token"].get("signing_key_file"),
              cfg.get("tls", {}).get("cert_file"), cfg.get("tls", {}).get("key_file"),
              cfg.get("upstream_tls", {}).get("ca_file")]:
        if p:
            got = provides(p)
            check(got is not None and got[0].get("readOnly") is True, f"config file {p} is mounted read-only")
    for mp in ("/var/lib/scopegate", "/tmp"):
        check(mp in mounts and not mounts[mp].get("readOnly"), f"{mp} is a writable volume")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > cfg["shutdown_grace_secs"], f"terminationGracePeriodSeconds {grace} > shutdown_grace_secs {cfg['shutdown_grace_secs']}")
    ann = pod["metadata"].get("annotations", {})
    cm_sha = hashlib.sha256((out / "configmap.yaml").read_bytes()).hexdigest()
    check(ann.get("checksum/config") == cm_sha, "checksum/config is the sha256 of the rendered ConfigMap")

    # --- Secrets referenced exist (rendered, or expected as existing ones)
    rendered_secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    external = EXPECT[name].get("external_secrets", set())
    refs = set()
    for v in volumes.values():
        if "secret" in v:
            refs.add((v["secret"]["secretName"], tuple(i["key"] for i in v["secret"].get("items", []))))
    for c in spec["containers"]:
        for e in c.get("env", []):
            r = e.get("valueFrom", {}).get("secretKeyRef")
            if r:
                refs.add((r["name"], (r["key"],)))
    for sname, keys in sorted(refs):
        if sname in rendered_secrets:
            data = rendered_secrets[sname].get("data", {})
            check(all(k in data for k in keys), f"Secret {sname} holds {list(keys)}")
        else:
            check(sname in external, f"Secret {sname} is an expected existing Secret")
    pvcs = {p["metadata"]["name"] for p in by_kind.get("PersistentVolumeClaim", [])}
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            check(v["persistentVolumeClaim"]["claimName"] in pvcs, f"claim {v['persistentVolumeClaim']['claimName']} is rendered")

    # --- Services
    svc_name = dep["metadata"]["name"]
    svc = one("Service", svc_name)
    check(svc is not None, "the public Service")
    check(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "Service selects the pods")
    check([p["targetPort"] for p in svc["spec"]["ports"]] == [public_name],
          f"Service exposes only the public port ({public_name})")
    all_ports = [p for c in spec["containers"] for p in c.get("ports", [])]
    check(all(p["containerPort"] != 5001 for p in all_ports), "port 5001 is not declared anywhere")

    # --- NetworkPolicy
    for np in by_kind.get("NetworkPolicy", []):
        if np["metadata"]["name"] == svc_name:
            check(np["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
                  "NetworkPolicy selects the scopegate pods")
            named = [p["port"] for r in np["spec"].get("ingress", []) for p in r.get("ports", [])]
            check(all(isinstance(p, int) or p in ports for p in named), f"NetworkPolicy ports {named} exist on the container")
            check(5001 not in named, "NetworkPolicy opens nothing to the registry port")

    # --- ServiceMonitor
    for sm in by_kind.get("ServiceMonitor", []):
        admin = one("Service", svc_name + "-admin")
        check(admin is not None, "ServiceMonitor has an admin Service to scrape")
        if admin:
            check(sm["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items(),
                  "ServiceMonitor selects the admin Service")
            check(not (sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()),
                  "ServiceMonitor does not select the public Service")
            check(all(e["port"] in [p["name"] for p in admin["spec"]["ports"]] for e in sm["spec"]["endpoints"]),
                  "ServiceMonitor endpoints name the admin port")

    # --- NOTES.txt
    notes = (out / "NOTES.txt").read_text()
    host = cfg["public_url"].split("://", 1)[1]
    check(f"docker login {host} -u MyToken" in notes, f"NOTES: docker login {host}")
    check(f"exec deploy/{svc_name} -c scopegate -- " in notes and "scopegate token create --name MyToken" in notes,
          "NOTES: kubectl exec ... scopegate token create")
    check("get secret" in notes and "base64decode" in notes, "NOTES: how to read the admin token")
    check("<no value>" not in notes and "<no value>" not in (out / "all.yaml").read_text(), "no <no value> left")

    # --- what this values set is about
    EXPECT[name]["check"](locals())
    done()


def expect_sidecar(v):
    containers, cfg, spec, dep = v["containers"], v["cfg"], v["spec"], v["dep"]
    reg = containers.get("registry")
    check(reg is not None and len(containers) == 2, "sidecar: the registry container is in the pod")
    env = env_map(reg)
    check(env["REGISTRY_HTTP_ADDR"]["value"] == "127.0.0.1:5001", "sidecar: registry bound to 127.0.0.1:5001")
    check(env["REGISTRY_STORAGE_DELETE_ENABLED"]["value"] == "true", "sidecar: registry deletes enabled")
    check("REGISTRY_HTTP_SECRET" in env, "sidecar: registry.env passed through")
    check(not reg.get("ports"), "sidecar: the registry declares no port")
    check(cfg["upstream"] == "http://127.0.0.1:5001", "sidecar: upstream is the loopback registry")
    check(cfg["anonymous"] == {"scope_map": "public-pull"}, "sidecar: anonymous.scope_map")
    check(cfg["limits"] == {"tags_max_n": 500}, "sidecar: only the limits given are rendered")
    check(cfg["log"] == {"format": "json", "level": "info"} and cfg["audit"] == {"output": "stdout"}, "sidecar: log and audit defaults")
    check(cfg["token"]["refresh_lifetime_secs"] == 7776000 and "signing_key_file" not in cfg["token"],
          "sidecar: token defaults as integers, no signing key")
    check("tls" not in cfg and "upstream_tls" not in cfg, "sidecar: no tls sections")
    check(dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1, "sidecar: one replica, Recreate")
    pvcs = {p["metadata"]["name"]: p for p in v["by_kind"]["PersistentVolumeClaim"]}
    check(set(pvcs) == {"scopegate-data", "scopegate-registry-data"}, "sidecar: data and registry claims")
    check(pvcs["scopegate-data"]["spec"].get("storageClassName") == "", "persistence.storageClass '-' gives storageClassName ''")
    check(pvcs["scopegate-registry-data"]["spec"]["resources"]["requests"]["storage"] == "50Gi", "registry claim size")
    check("admin-token" in v["rendered_secrets"]["scopegate"]["data"], "sidecar: generated admin token in the chart's Secret")
    tok = base64.b64decode(v["rendered_secrets"]["scopegate"]["data"]["admin-token"]).decode()
    check(tok.startswith("sga_") and len(tok) >= 16, "sidecar: generated admin token looks like one (sga_, >= 16)")
    check("Service" in v["by_kind"] and len(v["by_kind"]["Service"]) == 1, "sidecar: no admin Service by default")


def expect_standalone(v):
    containers, cfg, spec, env = v["containers"], v["cfg"], v["spec"], v["env"]
    check(list(containers) == ["scopegate"], "standalone: no registry container")
    check(cfg["upstream"] == "https://scopegate-registry.default.svc.cluster.local:5000", "standalone: upstream.url rendered with tpl")
    check(cfg.get("upstream_tls") == {"ca_file": "/etc/scopegate/upstream-ca/ca.crt"}, "standalone: upstream_tls.ca_file")
    check(v["volumes"]["upstream-ca"]["secret"]["secretName"] == "registry-ca", "standalone: CA from Secret registry-ca")
    check(cfg["token"].get("signing_key_file") == "/etc/scopegate/signing/key.pem", "standalone: signing_key_file")
    data = v["rendered_secrets"]["scopegate"]["data"]
    check("signing-key.pem" in data and "admin-token" not in data, "standalone: the chart's Secret holds the key, not the admin token")
    check(base64.b64decode(data["signing-key.pem"]).decode().startswith("-----BEGIN PRIVATE KEY-----"), "standalone: the signing key is the PEM given")
    ref = env["SCOPEGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    check(ref == {"name": "scopegate-admin", "key": "token"}, "standalone: admin token from the existing Secret")
    check(v["volumes"]["admin-token"]["secret"]["secretName"] == "scopegate-admin", "standalone: admin token file from the existing Secret")
    check("emptyDir" in v["volumes"]["data"], "standalone: persistence disabled gives an emptyDir")
    check("PersistentVolumeClaim" not in v["by_kind"], "standalone: no claim")
    check(v["svc"]["spec"]["type"] == "LoadBalancer", "standalone: Service type LoadBalancer")
    nps = {n["metadata"]["name"]: n for n in v["by_kind"]["NetworkPolicy"]}
    check(set(nps) == {"scopegate", "scopegate-registry"}, "standalone: policies for scopegate and for the registry")
    regnp = nps["scopegate-registry"]["spec"]
    check(regnp["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "docker-registry"}, "standalone: registry policy selects the registry pods")
    src = regnp["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    check(len(regnp["ingress"]) == 1 and src.items() <= v["pod"]["metadata"]["labels"].items(), "standalone: only scopegate's pods reach the registry")
    eg = nps["scopegate"]["spec"]
    check("Egress" in eg["policyTypes"] and len(eg["egress"]) == 2, "standalone: egress limited to DNS and the registry")
    check("SCOPEGATE_DATABASE_URL" not in env, "standalone: no database")
    check(cfg["limits"] == {"max_connections": 2048, "failed_logins": {"enabled": True, "lockout_after": 10, "lockout_secs": 1800}},
          "standalone: connection and failed-login limits rendered in the config's names")


def expect_tls(v):
    cfg, volumes, dep = v["cfg"], v["volumes"], v["dep"]
    check(cfg.get("tls") == {"cert_file": "/etc/scopegate/tls/tls.crt", "key_file": "/etc/scopegate/tls/tls.key"}, "tls: tls section")
    check(volumes["tls"]["secret"]["secretName"] == "registry-example-com-tls", "tls: certificate from the tls Secret")
    check(v["svc"]["spec"]["ports"][0]["port"] == 443 and v["svc"]["spec"]["ports"][0]["name"] == "https", "tls: Service port 443 named https")
    check("ServiceMonitor" in v["by_kind"], "tls: ServiceMonitor rendered")
    admin = v["one"]("Service", "scopegate-admin")
    check(admin is not None and admin["spec"]["ports"][0]["targetPort"] == "admin", "tls: admin Service")
    np = v["one"]("NetworkPolicy")
    check(len(np["spec"]["ingress"]) == 2 and np["spec"]["ingress"][1]["ports"][0]["port"] == "admin", "tls: Prometheus admitted to the admin port")
    data = v["rendered_secrets"]["scopegate"]["data"]
    check(data["admin-token"] == b64("sga_0123456789abcdefghijklmnopqrstuvwxyz"), "tls: adminToken.value stored")


def expect_postgres(v):
    dep, env, volumes, containers = v["dep"], v["env"], v["volumes"], v["containers"]
    check(dep["spec"]["replicas"] == 3, "postgres: 3 replicas")
    check(dep["spec"]["strategy"]["type"] == "RollingUpdate", "postgres: RollingUpdate")
    ref = env.get("SCOPEGATE_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
    check(ref == {"name": "scopegate-db", "key": "url"}, "postgres: SCOPEGATE_DATABASE_URL from the existing Secret")
    check("emptyDir" in volumes["data"] and "PersistentVolumeClaim" not in v["by_kind"], "postgres: data directory is an emptyDir, no claim")
    check(list(containers) == ["scopegate"], "postgres: standalone, one container")
    eg = v["one"]("NetworkPolicy")["spec"]["egress"]
    check(any(p.get("port") == 5432 for r in eg for p in r.get("ports", [])), "postgres: egress to PostgreSQL")
    check(v["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname", "postgres: topology spread")


EXPECT = {
    "sidecar": {"check": expect_sidecar, "external_secrets": {"registry-http-secret"}},
    "standalone": {"check": expect_standalone, "external_secrets": {"scopegate-admin", "registry-ca"}},
    "tls": {"check": expect_tls, "external_secrets": {"registry-example-com-tls"}},
    "postgres": {"check": expect_postgres, "external_secrets": {"scopegate-db"}},
}


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["schema-meta"] and len(a) == 2:
        cmd_schema_meta(a[1])
    elif a[:1] == ["values"] and len(a) in (3, 5):
        cmd_values(a[1], a[2], a[4] if len(a) == 5 and a[3] == "--expect-error" else None)
    elif a[:1] == ["servicemonitor"] and len(a) == 3:
        cmd_servicemonitor(a[1], a[2])
    elif a[:1] == ["rendered"] and len(a) == 3 and a[1] in EXPECT:
        cmd_rendered(a[1], a[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
