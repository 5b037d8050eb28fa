"""The demo workflow on a real single-node SLURM cluster, through Snakemake's SLURM executor.

What is checked:
* tests/slurm/start-cluster.sh brings the cluster up (a failure fails the test, nothing is skipped);
* `snakemake --workflow-profile profiles/slurm` builds the demo in a copy of the working tree
  (tracked and new files, fresh `vmpower synth` demo data), alongside a local build
  (`--cores 2`) of another copy and, when the locked docker image is available, a SLURM build
  with `--config runtime=docker` (otherwise that test reports a skip with the reason);
* every job that is not a localrule went through sbatch: SLURM's accounting (sacct) holds
  exactly one COMPLETED job per submitted Snakemake job, named after this run and commented
  with its rule and wildcards, and the plugin kept a SLURM log for each;
* the sbatch requests (memory, wall time, CPUs, account, partition) are the profile's;
* every file under results/ is byte-identical to the local build (provenance records: same
  files, not compared; under docker they must name the locked image).

The demo's training matrix is reduced (tests/slurm/demo-small.yaml, one node type): on SLURM
each job starts its own Snakemake, so the job count is what costs. Each build is bounded by
`timeout -k` (VMPOWER_SLURM_TEST_TIMEOUT seconds, default 1200).
Set VMPOWER_SLURM_KEEP=1 to keep the cluster (and the build copies, printed) after the test.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"
OVERLAY = "tests/slurm/demo-small.yaml"  # relative to a tree copy
TIMEOUT = int(os.environ.get("VMPOWER_SLURM_TEST_TIMEOUT", "1200"))
KEEP = os.environ.get("VMPOWER_SLURM_KEEP") == "1"
ACCOUNT, PARTITION = "vmpower", "main"  # made by start-cluster.sh
# Polling fast is fine on a private single-node cluster (the plugin's default first check is
# after 40 s, then every 40-180 s, which suits a shared site, not a test).
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
# Sidecars that may legitimately differ between builds (environment records); they must exist
# in both builds but are not compared byte for byte.
NOT_COMPARED = ("provenance/",)


def _run(cmd, *, cwd=None, env=None, timeout=None, log: Path | None = None) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)
    with open(log, "w") as fh:
        return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, stdout=fh, stderr=subprocess.STDOUT, text=True)


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def cluster():
    pidfile = Path("/run/vmpower-slurm/slurmctld.pid")
    was_up = pidfile.is_file()
    t0 = time.monotonic()
    r = _run(["bash", str(HERE / "start-cluster.sh")], timeout=600)
    assert r.returncode == 0, f"start-cluster.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    print(f"\ncluster up in {time.monotonic() - t0:.1f}s\n{r.stdout}")
    yield
    if not was_up and not KEEP:
        r = _run(["bash", str(HERE / "stop-cluster.sh")], timeout=120)
        assert r.returncode == 0, f"stop-cluster.sh failed:\n{r.stdout}\n{r.stderr}"


def _copy_tree(dst: Path) -> None:
    """The repository's files (tracked, plus new files git does not ignore) and fresh demo data."""
    r = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    assert r.returncode == 0, f"git ls-files failed: {r.stderr}"
    for rel in filter(None, r.stdout.split("\0")):
        src = REPO / rel
        if rel.startswith("data/raw/") or not src.is_file():
            continue  # committed real runs are not part of the demo; deleted files are skipped
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    env = _env(dst)
    r = _run([sys.executable, "-m", "vmpower", "synth", "--config", "config.yaml", "--out", "data/raw"], cwd=dst, env=env)
    assert r.returncode == 0, f"vmpower synth failed:\n{r.stdout}\n{r.stderr}"
    node_types = sorted(p.name for p in (dst / "data/raw").iterdir() if p.is_dir())
    assert node_types, "vmpower synth wrote no node types"
    for extra in node_types[1:]:  # one node type keeps the job count small
        shutil.rmtree(dst / "data/raw" / extra)


def _env(tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=str(tree / "src"),  # the copy's code, not the editable install's
        PYTHONHASHSEED="0",
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        VMPOWER_SLURM_ACCOUNT=ACCOUNT,
        VMPOWER_SLURM_PARTITION=PARTITION,
    )
    return env


def _snakemake(tree: Path, args: list[str], log: Path) -> subprocess.Popen:
    cmd = ["timeout", "-k", "30", str(TIMEOUT), str(SNAKEMAKE), *args]
    with open(log, "w") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=tree, env=_env(tree), stdout=fh, stderr=subprocess.STDOUT, text=True)


def _job_stats(log_text: str) -> dict[str, int]:
    """The first 'Job stats' table Snakemake printed: {rule: count}, without the total."""
    m = re.search(r"Job stats:\njob\s+count\n[- ]+\n((?:\S+\s+\d+\n)+)", log_text)
    assert m, "no Job stats table in the Snakemake log"
    stats = dict((name, int(n)) for name, n in (line.split() for line in m.group(1).splitlines()))
    stats.pop("total", None)
    return stats


def _sacct(run_id: str) -> list[dict]:
    fields = ["JobIDRaw", "JobName", "Comment", "State", "Account", "Partition", "ReqCPUS", "ReqMem", "Timelimit"]
    # slurmdbd records asynchronously; the job records are there by the time the plugin saw them
    # COMPLETED (it asks sacct), but give the last ones a moment.
    for _ in range(20):
        r = _run(["sacct", "-X", "-P", "-n", "--name", run_id, "--starttime", "now-1days", "--format", ",".join(fields)])
        assert r.returncode == 0, f"sacct failed: {r.stderr}"
        rows = [dict(zip(fields, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]
        if rows and all(row["State"] not in ("PENDING", "RUNNING") for row in rows):
            return rows
        time.sleep(0.5)
    return rows


def _profile_value(expr, attempt: int = 1):
    return eval(str(expr), {"attempt": attempt}) if isinstance(expr, str) else expr


def _compare_results(a: Path, b: Path) -> list[str]:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a, f"no results under {a}"
    assert files_a == files_b, (
        f"different result files: only SLURM {sorted(set(files_a) - set(files_b))}, "
        f"only local {sorted(set(files_b) - set(files_a))}"
    )
    # The report's provenance page lists the image each job ran in: it differs by runtime by design.
    compared = [f for f in files_a if not f.startswith(NOT_COMPARED)
                and not (f.startswith("report/") and Path(f).name.startswith("provenance."))]
    differ = [f for f in compared if not filecmp.cmp(a / f, b / f, shallow=False)]
    assert not differ, f"{len(differ)} of {len(compared)} result files differ between SLURM and local builds: {differ}"
    return compared


def _docker_problem(tree: Path) -> str | None:
    """Why the pinned pipeline image cannot run here (None: it can)."""
    lock_file = tree / "containers/images.lock.json"
    if not lock_file.is_file():
        return "containers/images.lock.json is missing (make images)"
    image_id = ((json.loads(lock_file.read_text()).get("images") or {}).get("pipeline") or {}).get("docker", {}).get("id")
    if not image_id:
        return "containers/images.lock.json has no docker build of the pipeline image (make images)"
    if not shutil.which("docker"):
        return "no docker client"
    r = _run(["docker", "image", "inspect", "--format", "{{.Id}}", image_id], timeout=60)
    if r.returncode != 0:
        return f"docker cannot run the locked image {image_id} ({r.stderr.strip()[:200]}; make images starts dockerd)"
    return None


DOCKER_TEST = "test_slurm_jobs_run_in_pinned_docker_image"


@pytest.fixture(scope="module")
def builds(request, cluster, tmp_path_factory):
    """The local build and the SLURM build(s) of the same tree, run at the same time: the SLURM
    builds spend much of their time between status checks. {name: (tree, log, seconds)}."""
    base = tmp_path_factory.mktemp("slurm-build")
    local_tree = base / "local"
    _copy_tree(local_tree)
    trees = {"local": local_tree, "slurm": base / "slurm"}
    shutil.copytree(local_tree, trees["slurm"], symlinks=True)
    want_docker = any(item.name == DOCKER_TEST for item in request.session.items)
    docker_problem = _docker_problem(local_tree) if want_docker else "not selected"
    if want_docker and docker_problem is None:
        trees["slurm-docker"] = base / "slurm-docker"
        shutil.copytree(local_tree, trees["slurm-docker"], symlinks=True)
    if KEEP:
        print(f"\nbuild copies: {trees}")
    slurm_args = ["--workflow-profile", "profiles/slurm", "--configfile", OVERLAY,
                  "--slurm-jobname-prefix", "vmpowertest", *FAST_POLL]
    args = {
        "local": ["--cores", "2", "--configfile", OVERLAY],
        "slurm": slurm_args,
        "slurm-docker": [*slurm_args, "--config", "runtime=docker"],
    }
    t0 = time.monotonic()
    procs = {name: _snakemake(tree, args[name], base / f"{name}.log") for name, tree in trees.items()}
    result = {}
    for name, proc in procs.items():
        rc = proc.wait()
        result[name] = (trees[name], base / f"{name}.log", rc, time.monotonic() - t0)
    print("\n" + ", ".join(f"{n} build {r[3]:.0f}s (exit {r[2]})" for n, r in result.items()))
    result["docker_problem"] = docker_problem
    return result


def _build(builds, name: str) -> tuple[Path, Path]:
    tree, log, rc, _ = builds[name]
    assert rc == 0, f"the {name} build failed (exit {rc}{', timed out' if rc in (124, 137) else ''}); log {log}:\n{_tail(log)}"
    return tree, log


def _check_went_through_sbatch(tree: Path, log: Path) -> dict[str, int]:
    """Every non-local job was one COMPLETED sbatch job with the profile's request; {rule: jobs}."""
    profile = yaml.safe_load((tree / "profiles/slurm/config.yaml").read_text())
    text = log.read_text()
    m = re.search(r"SLURM run ID: (\S+)", text)
    assert m, f"the SLURM executor did not run; log:\n{_tail(log)}"
    run_id = m.group(1)
    stats = _job_stats(text)
    local_rules = set(re.findall(r"^localrule (\w+):$", text, re.M))
    submitted = dict(re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+) ", text, re.M))
    remote_jobs = {rule: n for rule, n in stats.items() if rule not in local_rules}
    assert remote_jobs, f"no job was submitted to SLURM: {stats}"
    assert len(submitted) == sum(remote_jobs.values()), (
        f"{len(submitted)} sbatch submissions for {sum(remote_jobs.values())} non-local jobs {remote_jobs}"
    )
    # The heavy rules must run on the cluster, never as localrules.
    assert {"train_model", "export_model"} <= set(remote_jobs), f"local rules: {local_rules}"
    # Every rule that runs on SLURM has its attempt-scaled resources in the profile.
    assert set(remote_jobs) <= set(profile["set-resources"]), (
        f"rules without set-resources in profiles/slurm: {set(remote_jobs) - set(profile['set-resources'])}"
    )

    rows = _sacct(run_id)
    by_id = {row["JobIDRaw"]: row for row in rows}
    assert set(by_id) == set(submitted.values()), (
        f"sacct knows jobs {sorted(by_id)} of run {run_id}, Snakemake submitted {sorted(submitted.values())}"
    )
    assert all(row["State"] == "COMPLETED" for row in rows), [r for r in rows if r["State"] != "COMPLETED"]
    per_rule: dict[str, int] = {}
    for row in rows:
        cm = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", row["Comment"])
        assert cm, f"unexpected job comment {row['Comment']!r}"
        rule = cm.group(1)
        per_rule[rule] = per_rule.get(rule, 0) + 1
        # The sbatch request is the profile's (attempt 1) and the site settings from the environment.
        res = profile["set-resources"][rule]
        assert row["ReqMem"] == f"{_profile_value(res['mem_mb'])}M", row
        assert row["Timelimit"] == time.strftime("%H:%M:00", time.gmtime(60 * _profile_value(res["runtime"]))), row
        assert (row["Account"], row["Partition"], row["ReqCPUS"]) == (ACCOUNT, PARTITION, "1"), row
        # The plugin keeps each job's SLURM log (slurm-keep-successful-logs).
        logs = list((tree / ".snakemake/slurm_logs" / f"rule_{rule}").rglob(f"{row['JobIDRaw']}.log"))
        assert logs, f"no SLURM log for job {row['JobIDRaw']} ({rule})"
    assert per_rule == remote_jobs, f"sacct per rule {per_rule} != Snakemake's non-local jobs {remote_jobs}"
    assert len({row["Comment"] for row in rows}) == len(rows), "a job ran twice"
    print(f"\n{len(rows)} sbatch jobs {per_rule}; local rules {sorted(local_rules)}")
    return per_rule


def test_demo_workflow_on_slurm_matches_local_build(builds):
    local_tree, _ = _build(builds, "local")
    slurm_tree, slurm_log = _build(builds, "slurm")
    _check_went_through_sbatch(slurm_tree, slurm_log)
    compared = _compare_results(slurm_tree / "results", local_tree / "results")
    print(f"{len(compared)} result files byte-identical to the local build")


@pytest.mark.docker
def test_slurm_jobs_run_in_pinned_docker_image(builds):
    """runtime=docker on the node: each SLURM job's shell runs `docker run <locked image ID>`."""
    if builds["docker_problem"]:
        pytest.skip(f"runtime=docker unavailable: {builds['docker_problem']}")
    local_tree, _ = _build(builds, "local")
    tree, log = _build(builds, "slurm-docker")
    _check_went_through_sbatch(tree, log)
    lock = json.loads((tree / "containers/images.lock.json").read_text())
    image_id = lock["images"]["pipeline"]["docker"]["id"]
    assert "run --rm" in log.read_text() and image_id in log.read_text(), "jobs were not docker run on the locked image"
    # Every job's provenance record names the locked image (what `vmpower check-images` checks).
    records = sorted((tree / "results/provenance").rglob("*.json"))
    assert records, "no provenance records"
    digests = {}
    for path in records:
        found = re.findall(r'"image_digest":\s*"([^"]*)"', path.read_text())
        assert found, f"{path}: no image_digest"
        digests.update((d, path) for d in found)
    assert set(digests) == {image_id}, f"jobs ran in {sorted(digests)}, locked pipeline image is {image_id}"
    compared = _compare_results(tree / "results", local_tree / "results")
    print(f"{len(compared)} result files byte-identical to the local (runtime=local) build")


def test_profile_rules_exist_in_workflow():
    """A renamed rule would silently lose its SLURM resources: every rule the profile names exists."""
    slurm_tree = REPO
    r = _run([str(SNAKEMAKE), "--list-rules", "--workflow-profile", "none"], cwd=slurm_tree, env=_env(slurm_tree))
    assert r.returncode == 0, r.stderr
    rules = set(r.stdout.split())
    profile = yaml.safe_load((slurm_tree / "profiles/slurm/config.yaml").read_text())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    assert named <= rules, f"profiles/slurm names rules the workflow does not have: {named - rules}"
