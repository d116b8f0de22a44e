#!/usr/bin/env python3
"""Builds an OCI image archive (a tar of an OCI layout) from Debian's busybox-static.

No registry and no Docker: the image has one layer with /bin/busybox and a
symlink in /bin for each of its applets, plus a minimal /etc. Output is
deterministic (fixed mtimes, sorted entries), so the image digest only changes
when busybox does.

  build-image.py OUT.tar NAME [--pause]

NAME is the image reference the archive carries (e.g.
localhost/testenv/busybox:latest). With --pause the image runs
`busybox sleep 2147483647` as its entrypoint: the pod sandbox ("pause")
image the kubelet's containerd needs. Import with
`ctr -n k8s.io images import OUT.tar`.
"""
import hashlib, io, json, subprocess, sys, tarfile

BUSYBOX = "/usr/bin/busybox"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    out, name = args
    pause = "--pause" in sys.argv[1:]
    bb = open(BUSYBOX, "rb").read()
    applets = sorted(set(subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                                        text=True).stdout.split()) - {"busybox"})

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        def entry(path, kind=tarfile.REGTYPE, mode=0o644, data=b"", link=""):
            ti = tarfile.TarInfo(path)
            ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 0, link
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        for d, mode in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("var", 0o755)]:
            entry(d, tarfile.DIRTYPE, mode)
        entry("bin/busybox", mode=0o755, data=bb)
        for a in applets:
            entry(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox")
        entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
    layer_b = layer.getvalue()

    def sha(b):
        return hashlib.sha256(b).hexdigest()

    cfg = {"Env": ["PATH=/bin"]}
    if pause:
        cfg["Entrypoint"] = ["/bin/busybox", "sleep", "2147483647"]
    else:
        cfg["Cmd"] = ["/bin/sh"]
    config = {"architecture": "amd64", "os": "linux", "config": cfg,
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(layer_b)}"]}}
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": f"sha256:{sha(config_b)}", "size": len(config_b)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": f"sha256:{sha(layer_b)}", "size": len(layer_b)}]}
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{sha(manifest_b)}", "size": len(manifest_b),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]}
    with tarfile.open(out, "w") as t:
        def add(path, data):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mtime = len(data), 0
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for b in (layer_b, config_b, manifest_b):
            add(f"blobs/sha256/{sha(b)}", b)
    print(out)


if __name__ == "__main__":
    main()
