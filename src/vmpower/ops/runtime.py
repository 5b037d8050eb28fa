"""Where each pipeline job runs: the current Python, or the digest-pinned images.

``config["runtime"]`` chooses:

* ``local``     -- ``<this python> -m vmpower`` (the venv installed from envs/dev.lock)
* ``docker`` / ``podman`` -- ``<engine> run --rm --network none --user <uid>:<gid> ...`` on the
  image ID pinned in ``containers/images.lock.json`` (written by ``make images``). Only the
  working directory is mounted; the vmpower source comes from it (``PYTHONPATH=<cwd>/src``),
  so editing a stage reruns it without rebuilding any image.
* ``apptainer`` -- plain ``python3 -m vmpower``: ``snakemake --sdm apptainer`` wraps each job
  in the image named by the rules' ``container:`` directive (:func:`container_ref`).

Every job exports ``VMPOWER_IMAGE_DIGEST`` (see :mod:`vmpower.ops.provenance`); ``vmpower
check-images`` fails when a provenance record names another image than the locked one.

Kept free of third-party imports except PyYAML (loaded lazily): Snakemake imports this module
while parsing the workflow.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from vmpower.errors import InputError

# conda: `snakemake --sdm conda` activates envs/pipeline.conda.yaml around each job.
RUNTIMES = ("local", "conda", "docker", "podman", "apptainer")
ENGINES = ("docker", "podman")
DEFAULT_LOCK = "containers/images.lock.json"
DEFAULT_PODMAN_CONF = "containers/containers.conf"
LOCAL_DIGEST = "local"
# Passed through from the job's environment when set (Snakemake sets them from `threads:`).
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")


class RuntimeUnavailable(InputError):
    """The configured runtime cannot run jobs here (no lock, no engine, stale image ...)."""

    def __init__(self, problem: str):
        super().__init__("runtime", problem)


# ------------------------------------------------------------------------------ config + lock


def _settings(config: dict) -> dict:
    return dict(config.get("containers") or {})


def runtime_of(config: dict) -> str:
    runtime = str(config.get("runtime") or "local")
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    return runtime


def lock_path(config: dict) -> Path:
    return Path(_settings(config).get("lock") or DEFAULT_LOCK)


def load_lock(path: str | os.PathLike) -> dict:
    """The image lock, or an empty dict when there is none yet."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise InputError(path, f"not valid JSON ({err}); rerun `make images`") from err


def _image_entry(lock: dict, image: str, lock_file) -> dict:
    entry = (lock.get("images") or {}).get(image)
    if not entry:
        raise RuntimeUnavailable(f"{lock_file} has no image {image!r}: run `make images`")
    return entry


def locked_digest(lock: dict, image: str, runtime: str, lock_file="images lock") -> str:
    """The digest a job of ``image`` must record under ``runtime`` ("local" locally)."""
    if runtime in ("local", "conda"):
        return LOCAL_DIGEST
    entry = _image_entry(lock, image, lock_file)
    if runtime == "apptainer":
        digest = entry.get("manifest_digest")
        if not digest:
            raise RuntimeUnavailable(
                f"{lock_file}: image {image!r} has no registry manifest digest: push the images "
                "(PUSH_REGISTRY=<registry> make images, docs/containers.md)"
            )
        return digest
    built = entry.get(runtime) or {}
    if not built.get("id"):
        hint = "ENGINE=podman make images" if runtime == "podman" else "make images"
        raise RuntimeUnavailable(f"{lock_file}: no {runtime} build of image {image!r}: run `{hint}`")
    return built["id"]


def _check_not_stale(entry: dict, engine: str, image: str) -> None:
    """The image must have been built from the lock file the venv uses now."""
    env_lock = entry.get("env_lock")
    want = (entry.get(engine) or {}).get("env_lock_sha256")
    if not env_lock or not want or not Path(env_lock).is_file():
        return
    import hashlib

    have = hashlib.sha256(Path(env_lock).read_bytes()).hexdigest()
    if have != want:
        raise RuntimeUnavailable(f"image {image!r} was built from an older {env_lock}: run `make images`")


def engine_binary(config: dict, engine: str) -> str:
    configured = (_settings(config).get("engine_binary") or {})
    if isinstance(configured, str):  # one binary for the configured runtime
        configured = {engine: configured} if configured else {}
    binary = configured.get(engine) or shutil.which(engine)
    if not binary:
        raise RuntimeUnavailable(f"runtime={engine} but no `{engine}` binary on PATH: run `make images`")
    return binary


def _engine_env(config: dict, engine: str) -> dict[str, str]:
    if engine != "podman":
        return {}
    conf = Path(_settings(config).get("podman_conf") or DEFAULT_PODMAN_CONF)
    return {"CONTAINERS_CONF": str(conf.resolve())}


@functools.lru_cache(maxsize=None)
def _probe_image(binary: str, image_id: str, env_items: tuple) -> str | None:
    """None when the engine runs and has the image; else the problem, on one line."""
    env = {**os.environ, **dict(env_items)}
    try:
        proc = subprocess.run(
            [binary, "image", "inspect", "--format", "{{.Id}}", image_id],
            capture_output=True, text=True, timeout=60, env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{binary} does not answer ({err.__class__.__name__}): is the engine running? run `make images`"
    if proc.returncode == 0:
        return None
    err = " ".join(proc.stderr.split())
    if any(s in err.lower() for s in ("no such image", "image not known", "no such object", "not found")):
        return f"the locked image {image_id} is not in this engine: run `make images`"
    return f"the container engine is not running ({err[:160]}): run `make images` (it starts dockerd)"


# ------------------------------------------------------------------------------ public API


def _job_cwd() -> str:
    return os.getcwd()


def _check_paths_inside(config: dict, cwd: str) -> None:
    """Only the working directory is mounted: data and results must live inside it."""
    for key in ("raw_dir", "results_dir"):
        value = config.get(key)
        if not value:
            continue
        path = Path(cwd, value).resolve()
        if path != Path(cwd).resolve() and Path(cwd).resolve() not in path.parents:
            raise RuntimeUnavailable(
                f"{key}={value} is outside the working directory {cwd}, the only directory "
                "mounted into the container"
            )


def command(config: dict, image: str = "pipeline") -> str:
    """The shell prefix that runs ``python -m vmpower`` for one job of ``image``."""
    runtime = runtime_of(config)
    if runtime == "local":
        return f"{shlex.quote(sys.executable)} -m vmpower"
    if runtime == "conda":
        return f'PYTHONPATH={shlex.quote(_job_cwd() + "/src")} PYTHONHASHSEED=0 OMP_NUM_THREADS="${{OMP_NUM_THREADS:-1}}" python -m vmpower'
    cwd = _job_cwd()
    lock_file = lock_path(config)
    lock = load_lock(lock_file)
    if not lock:
        raise RuntimeUnavailable(f"runtime={runtime} needs {lock_file}, which is missing: run `make images`")
    digest = locked_digest(lock, image, runtime, lock_file)
    pythonpath = f"{cwd}/src"
    if runtime == "apptainer":
        # Snakemake (--sdm apptainer) runs this inside the image of the `container:` directive;
        # apptainer passes the environment through and binds the working directory.
        env = [("PYTHONPATH", pythonpath), ("VMPOWER_IMAGE_DIGEST", digest), ("PYTHONHASHSEED", "0")]
        return (" ".join(f"{k}={shlex.quote(v)}" for k, v in env)
                + ' OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python3 -m vmpower')

    engine = runtime
    _check_not_stale(_image_entry(lock, image, lock_file), engine, image)
    _check_paths_inside(config, cwd)
    binary = engine_binary(config, engine)
    engine_env = _engine_env(config, engine)
    problem = _probe_image(binary, digest, tuple(sorted(engine_env.items())))
    if problem:
        raise RuntimeUnavailable(f"runtime={runtime}: {problem}")
    args = [
        binary, "run", "--rm", "--network", "none", "--pull", "never",
        "--user", f"{os.getuid()}:{os.getgid()}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--log-driver", "none" if engine == "docker" else "passthrough",
        "-v", f"{cwd}:{cwd}", "-w", cwd,
        # Repeated from the image's ENV so that a site's own base cannot change them.
        "-e", f"PYTHONPATH={pythonpath}", "-e", "HOME=/tmp", "-e", f"VMPOWER_IMAGE_DIGEST={digest}",
        "-e", "PYTHONHASHSEED=0",
    ]
    # Thread limits: Snakemake exports them per job (from `threads:`); `-e NAME` passes the
    # host's value through when set. OMP_NUM_THREADS defaults to 1.
    passthrough = [f"-e {name}" for name in THREAD_VARS]
    tail = [digest, "python3", "-m", "vmpower"]
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in engine_env.items())
    return " ".join(
        ([prefix] if prefix else [])
        + [shlex.quote(a) for a in args]
        + ['-e "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"']
        + passthrough
        + [shlex.quote(a) for a in tail]
    )


def container_ref(config: dict, image: str = "pipeline") -> str | None:
    """``docker://<registry>/<name>@sha256:...`` for the rules' ``container:`` directive.

    None unless a registry prefix is configured (``containers.registry``) and the lock exists.
    The digest is the registry manifest digest recorded when the images were pushed.
    """
    registry = str(_settings(config).get("registry") or "").strip().rstrip("/")
    if not registry:
        return None
    if registry.startswith("docker://"):
        registry = registry[len("docker://"):]
    lock_file = lock_path(config)
    lock = load_lock(lock_file)
    if not lock:
        return None
    entry = _image_entry(lock, image, lock_file)
    digest = locked_digest(lock, image, "apptainer", lock_file)
    name = entry.get("name") or f"vmpower-{image}"
    return f"docker://{registry}/{name}@{digest}"


# ------------------------------------------------------------------------------ checking


def _find_digests(obj) -> list[str]:
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image_digest" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_find_digests(value))
    elif isinstance(obj, list):
        for value in obj:
            found.extend(_find_digests(value))
    return found


def provenance_files(paths) -> list[Path]:
    """JSON files among ``paths`` (directories are searched recursively), sorted."""
    files = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p] if p.exists() else [])
    return sorted(set(files))


def check_outputs(provenance_paths, lock: dict | str | os.PathLike, runtime: str = "docker",
                  image: str = "pipeline") -> list[str]:
    """Problems (one line each) with the provenance records; empty when all ran in the locked image.

    ``lock`` is the parsed lock or its path. Under ``runtime=local`` every record must say
    ``"local"``; under docker/podman the engine's locked image ID; under apptainer the pushed
    manifest digest.
    """
    lock_file = lock if not isinstance(lock, dict) else "images lock"
    lock = lock if isinstance(lock, dict) else load_lock(lock)
    if runtime not in ("local", "conda") and not lock:
        return [f"{lock_file}: missing: run `make images`"]
    try:
        want = locked_digest(lock, image, runtime, lock_file)
    except InputError as err:
        return [str(err)]
    problems = []
    files = provenance_files(provenance_paths)
    if not files:
        return ["no provenance records found"]
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: unreadable provenance record ({err.__class__.__name__})")
            continue
        digests = _find_digests(record)
        if not digests:
            problems.append(f"{path}: no image_digest recorded")
        for digest in digests:
            if digest != want:
                problems.append(f"{path}: ran in image {digest}, locked {image} image is {want} (runtime={runtime})")
    return problems


def _cmd_check_images(args) -> int:
    config = {}
    if args.config:
        from vmpower.configcheck import check_file

        config = check_file(args.config)
    runtime = args.runtime or runtime_of(config)
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"--runtime must be one of {', '.join(RUNTIMES)}")
    lock_file = args.lock or lock_path(config)
    problems = check_outputs(args.paths, lock_file, runtime=runtime, image=args.image)
    for line in problems:
        print(f"vmpower check-images: {line}", file=sys.stderr)
    if problems:
        print(f"vmpower check-images: FAILED ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    n = len(provenance_files(args.paths))
    if args.ok_file:
        from vmpower.io import write_text

        write_text(f"{n} provenance records ran in the locked {args.image} image (runtime={runtime})\n", args.ok_file)
    print(f"vmpower check-images: {n} records OK (runtime={runtime})", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-images",
        help="fail when a job's provenance names another image than the locked one",
        description="Check that every provenance record (results/provenance/**.json) carries the "
        "image digest pinned in containers/images.lock.json for the runtime ('local' for runtime=local).",
    )
    p.add_argument("paths", nargs="*", default=["results/provenance"], help="provenance JSON files or directories")
    p.add_argument("--config", default=None, help="config.yaml (runtime and containers.lock)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None, help="overrides config runtime")
    p.add_argument("--lock", default=None, help=f"image lock (default: containers.lock or {DEFAULT_LOCK})")
    p.add_argument("--image", default="pipeline", help="image the jobs ran in (default: pipeline)")
    p.add_argument("--ok-file", default=None, help="write a one-line summary here on success (a rule output)")
    p.set_defaults(func=_cmd_check_images)
