#!/usr/bin/env python3
"""Assembles an OCI image archive (a tar of an OCI image layout) from files on this machine, without a daemon.

  oci_image.py --out OUT.tar --name REF --entrypoint PATH [--file SRC:DEST ...] [--env K=V ...]

Two layers: a base of what the binaries need at run time (the shared libraries `ldd` names, the dynamic loader,
CA certificates when the build host has them, /etc/passwd and /etc/group with the nonroot user 65532, /tmp), then
the files. Deterministic: entries sorted, owners 0, mtimes SOURCE_DATE_EPOCH (default 0), gzip without a timestamp,
JSON with sorted keys; the same inputs give the same digest. Load with `ctr -n k8s.io images import OUT.tar`; copy to
a registry with any OCI tool (e.g. `skopeo copy oci-archive:OUT.tar docker://REGISTRY/NAME:TAG`).
"""
import argparse, datetime, gzip, hashlib, io, json, os, re, subprocess, sys, tarfile

CERTS = "/etc/ssl/certs/ca-certificates.crt"


def libraries(binaries):
    """The shared libraries the binaries load, with the dynamic loader, as absolute host paths."""
    out = set()
    for b in binaries:
        text = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        if "not a dynamic executable" in text or "statically linked" in text:
            continue
        for line in text.splitlines():
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
            if m:
                out.add(m.group(1))
    return sorted(out)


def layer(entries, mtime):
    """A gzip'd tar of entries: (path, kind, mode, data)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, kind, mode, data in sorted(entries, key=lambda e: e[0]):
            ti = tarfile.TarInfo(path)
            ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, mtime, 0, 0
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    tar_b = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=9) as z:
        z.write(tar_b)
    return tar_b, gz.getvalue()


def dirs_of(paths):
    out = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(d for d in out if d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True, help="the image reference the archive carries, e.g. ghcr.io/haiyun/haiyun-operator:0.1.0")
    ap.add_argument("--entrypoint", required=True, nargs="+")
    ap.add_argument("--file", action="append", default=[], help="SRC:DEST (DEST absolute)")
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    files = []
    for spec in a.file:
        src, _, dest = spec.partition(":")
        if not dest.startswith("/"):
            sys.exit(f"--file {spec}: DEST must be absolute, e.g. target/release/x:/usr/local/bin/x")
        files.append((src, dest.lstrip("/")))

    base_files = [(lib, lib.lstrip("/")) for lib in libraries([s for s, _ in files])]
    if os.path.exists(CERTS):
        base_files.append((CERTS, CERTS.lstrip("/")))
    base = [(d, tarfile.DIRTYPE, 0o755, b"") for d in dirs_of([p for _, p in base_files] + ["etc/passwd"])]
    base.append(("tmp", tarfile.DIRTYPE, 0o1777, b""))
    base.append(("etc/passwd", tarfile.REGTYPE, 0o644,
                 b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"))
    base.append(("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnonroot:x:65532:\n"))
    for src, dest in base_files:
        base.append((dest, tarfile.REGTYPE, 0o755, open(os.path.realpath(src), "rb").read()))
    app = [(d, tarfile.DIRTYPE, 0o755, b"") for d in dirs_of([p for _, p in files])]
    for src, dest in files:
        app.append((dest, tarfile.REGTYPE, 0o755, open(src, "rb").read()))

    def sha(b):
        return hashlib.sha256(b).hexdigest()

    layers = [layer(base, mtime), layer(app, mtime)]
    config = {
        "architecture": "amd64", "os": "linux",
        "created": datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {"Entrypoint": a.entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] + a.env,
                   "User": "65532:65532", "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(t)}" for t, _ in layers]},
    }
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": f"sha256:{sha(config_b)}", "size": len(config_b)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": f"sha256:{sha(g)}", "size": len(g)} for _, g in layers]}
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{sha(manifest_b)}", "size": len(manifest_b),
        "annotations": {"io.containerd.image.name": a.name,
                        "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]}}]}
    with tarfile.open(a.out, "w") as t:
        def add(path, data):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mtime = len(data), mtime
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index, sort_keys=True).encode())
        blobs = {sha(b): b for b in [g for _, g in layers] + [config_b, manifest_b]}
        for digest in sorted(blobs):
            add(f"blobs/sha256/{digest}", blobs[digest])
    size = sum(len(g) for _, g in layers)
    print(json.dumps({"image": a.name, "archive": a.out, "manifest": f"sha256:{sha(manifest_b)}",
                      "compressed_bytes": size}))


if __name__ == "__main__":
    main()
