"""``vmpower report-provenance``: image digests, lock hashes and input checksums of a node_type."""

from __future__ import annotations

import json
from pathlib import Path

from vmpower.fingerprint import input_checksums
from vmpower.io import write_json, write_text
from vmpower.pipeline.report.html import esc, html_page, html_table


def provenance_summary(node_type: str, run_files: list[str], records: list[str], locks: list[str],
                       image_lock: str | None) -> dict:
    runs: dict = {}
    for path, digest in input_checksums(run_files).items():
        run = Path(path).parent.name
        runs.setdefault(run, {})[Path(path).name] = digest
    digests: dict = {}
    envs: dict = {}
    for p in sorted(records):
        rec = json.loads(Path(p).read_text())
        env = rec.get("environment") or {}
        digest = env.get("image_digest", "?")
        digests[digest] = digests.get(digest, 0) + 1
        key = json.dumps({"python": env.get("python"), "packages": env.get("packages") or {}}, sort_keys=True)
        envs[key] = envs.get(key, 0) + 1
    images = {}
    if image_lock and Path(image_lock).exists():
        lock = json.loads(Path(image_lock).read_text())
        for name, entry in sorted((lock.get("images") or {}).items()):
            images[name] = {
                "name": entry.get("name"), "env_lock": entry.get("env_lock"),
                "manifest_digest": entry.get("manifest_digest"),
                **{eng: {"id": (entry.get(eng) or {}).get("id"),
                         "env_lock_sha256": (entry.get(eng) or {}).get("env_lock_sha256")}
                   for eng in ("docker", "podman") if entry.get(eng)},
            }
    return {
        "node_type": node_type,
        "runs": runs,
        "job_image_digests": digests,
        "job_environments": [{**json.loads(k), "jobs": n} for k, n in sorted(envs.items())],
        "locks": input_checksums(locks),
        "image_lock": input_checksums([image_lock])[Path(image_lock).as_posix()] if image_lock and Path(image_lock).exists() else None,
        "locked_images": images,
    }


def cmd_provenance(args) -> int:
    data = provenance_summary(args.node_type, args.inputs, args.records, args.locks, args.image_lock)
    write_json(data, args.json)
    nt = args.node_type
    body = ["<h2>Images the jobs ran in</h2>",
            "<p>The image digest each job of this node_type recorded (<code>local</code>: the venv of "
            "<code>envs/dev.lock</code>, runtime=local).</p>",
            html_table(["image digest", "jobs"], [[d, n] for d, n in sorted(data["job_image_digests"].items())])]
    for env in data["job_environments"]:
        body.append(f"<p>Python {esc(env.get('python'))}, {env['jobs']} jobs:</p>")
        body.append(html_table(["package", "version"], sorted((env.get("packages") or {}).items()), left=2))
    body.append("<h2>Locked images</h2>")
    rows = []
    for image, entry in data["locked_images"].items():
        for eng in ("docker", "podman"):
            if eng in entry:
                rows.append([image, eng, entry[eng]["id"], entry.get("env_lock"), entry[eng]["env_lock_sha256"]])
        if entry.get("manifest_digest"):
            rows.append([image, "registry", entry["manifest_digest"], entry.get("env_lock"), "-"])
    body.append(html_table(["image", "engine", "image ID / digest", "env lock", "env lock sha256"], rows, left=5)
                if rows else "<p>(no image lock)</p>")
    body.append("<h2>Lock files</h2>")
    locks = dict(data["locks"])
    if args.image_lock and data["image_lock"]:
        locks[Path(args.image_lock).as_posix()] = data["image_lock"]
    body.append(html_table(["file", "sha256"], sorted(locks.items()), left=2))
    body.append("<h2>Input runs</h2>")
    body.append(html_table(["run", "file", "sha256"],
                           [[run, f, d] for run, files in sorted(data["runs"].items()) for f, d in sorted(files.items())],
                           left=3))
    write_text(html_page(f"{nt}: provenance", body), args.html)
    return 0
