"""The demo workflow on a real single-node SLURM cluster, through Snakemake's SLURM executor.

What is checked:
* tests/slurm/start-cluster.sh brings the cluster up (a failure fails the test, nothing is skipped);
* `snakemake --workflow-profile profiles/slurm` builds the demo in a copy of the working tree
  (tracked and new files, fresh `vmpower synth` demo data), alongside a plain local build
  (`snakemake`, i.e. profiles/default) of another copy and, when the locked docker image is
  available, a SLURM build with `--config runtime=docker` (otherwise that test reports a skip
  with the reason, or fails when CI=true: CI runs `make images` first);
* the workflow's local rules (Snakemake's own decision for the SLURM executor) are exactly
  LOCAL_RULES, and the run executed exactly the jobs of Snakemake's plan (a dry run);
* every other job went through sbatch: SLURM's accounting (sacct) holds exactly one COMPLETED
  job per submitted Snakemake job, named after this run and commented with its rule and
  wildcards, and the plugin kept a SLURM log for each;
* the sbatch requests (memory, wall time, CPUs, account, partition) are the profile's;
* every file under results/ is byte-identical to the local build, provenance records and the
  report's provenance pages included; under docker, after replacing the locked image ID by
  `local` (and runtime=docker by runtime=local) in those provenance files only;
* a job that fails on its first attempt is resubmitted with twice the memory and wall time
  (a tiny workflow with the real profile; sacct shows both attempts);
* a plain `snakemake` uses profiles/default (local, its cores, failed logs on the console).

The demo's training matrix is reduced (tests/slurm/demo-small.yaml, one node type): on SLURM
each job starts its own Snakemake, so the job count is what costs. Each build is bounded by
`timeout -k` (VMPOWER_SLURM_TEST_TIMEOUT seconds, default 1200), every other subprocess by a timeout.
Set VMPOWER_SLURM_KEEP=1 to keep the cluster (and the build copies, printed) after the test.
"""

from __future__ import annotations

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
# The workflow's localrules (rules/common.smk) plus `all` (no shell: always local). Tiny steps
# only: a heavy rule here would silently run on the submit host.
LOCAL_RULES = {"check_layout", "export_select", "export_summary", "export_check_images", "report_markdown", "all"}


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
    r = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, timeout=60)
    assert r.returncode == 0, f"git ls-files failed: {r.stderr}"
    for rel in filter(None, r.stdout.split("\0")):
        src = REPO / rel
        if rel.startswith("data/raw/") or not src.is_file():
            continue  # committed real runs are not part of the demo; deleted files are skipped
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    env = _env(dst)
    r = _run([sys.executable, "-m", "vmpower", "synth", "--config", "config.yaml", "--out", "data/raw"], cwd=dst, env=env,
             timeout=300)
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
        r = _run(["sacct", "-X", "-P", "-n", "--name", run_id, "--starttime", "now-1days", "--format", ",".join(fields)],
                 timeout=60)
        assert r.returncode == 0, f"sacct failed: {r.stderr}"
        rows = [dict(zip(fields, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]
        if rows and all(row["State"] not in ("PENDING", "RUNNING") for row in rows):
            return rows
        time.sleep(0.5)
    return rows


def _timelimit(minutes: int) -> str:
    """sacct's Timelimit for a runtime in minutes: [D-]HH:MM:SS."""
    d, m = divmod(int(minutes), 24 * 60)
    return (f"{d}-" if d else "") + f"{m // 60:02d}:{m % 60:02d}:00"


# Which rules Snakemake runs on the submit host under the SLURM executor: the workflow loaded
# through Snakemake's API and asked with its own Workflow.is_local, with the SLURM executor
# plugin set as a run sets it (is_local is True for every rule under the local executor); and
# the mem_mb and runtime each other rule declares, evaluated for attempts 1 to 3.
_WORKFLOW_PROBE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(ResourceSettings(), ConfigSettings(configfiles=[Path(p) for p in sys.argv[1:]]),
                      snakefile=Path("Snakefile"), workdir=Path.cwd())._workflow
    wf._executor_plugin = ExecutorPluginRegistry().get_plugin("slurm")
    assert not wf.local_exec
    def declared(rule, name, attempt):
        res = rule.resources.get(name)
        return None if res is None else res.evaluate(None, attempt=attempt).value
    print(json.dumps({r.name: {"local": wf.is_local(r), "resources": None if wf.is_local(r) else {
        name: [declared(r, name, a) for a in (1, 2, 3)] for name in ("mem_mb", "runtime")}} for r in wf.rules}))
"""


def _workflow_rules(tree: Path) -> dict[str, dict]:
    """{rule: {"local": runs on the submit host under SLURM, "resources": {"mem_mb"/"runtime":
    [attempt 1, 2, 3]} (None for a local rule)}} of the workflow in `tree`."""
    r = _run([sys.executable, "-c", _WORKFLOW_PROBE, OVERLAY], cwd=tree, env=_env(tree), timeout=120)
    assert r.returncode == 0, f"loading the workflow failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _result_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _is_provenance(rel: str) -> bool:
    """Files that record where jobs ran: the per-job records and the report's provenance page."""
    return rel.startswith("provenance/") or bool(re.fullmatch(r"report/[^/]+/provenance\.(html|json)", rel))


def _compare_results(a: Path, b: Path, *, same_in_provenance: dict[str, str] | None = None) -> list[str]:
    """Every file under a and b byte for byte. `same_in_provenance` {old: new}: strings replaced
    in both trees' provenance files (only there) before comparing."""
    files_a, files_b = _result_files(a), _result_files(b)
    assert files_a, f"no results under {a}"
    assert files_a == files_b, (
        f"different result files: only in {a.parent.name} {sorted(set(files_a) - set(files_b))}, "
        f"only in {b.parent.name} {sorted(set(files_b) - set(files_a))}"
    )

    def content(root: Path, rel: str) -> bytes:
        data = (root / rel).read_bytes()
        if same_in_provenance and _is_provenance(rel):
            for old, new in same_in_provenance.items():
                data = data.replace(old.encode(), new.encode())
        return data

    differ = [f for f in files_a if content(a, f) != content(b, f)]
    assert not differ, f"{len(differ)} of {len(files_a)} result files differ between {a.parent.name} and {b.parent.name}: {differ}"
    assert any(_is_provenance(f) for f in files_a), "no provenance files were compared"
    return files_a


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
    builds spend much of their time between status checks. {name: (tree, log, rc, seconds)};
    also "plan" {name: Snakemake's dry-run job stats} and "workflow" (_workflow_rules)."""
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
        "local": ["--configfile", OVERLAY],  # plain snakemake: profiles/default (local, its cores)
        "slurm": slurm_args,
        "slurm-docker": [*slurm_args, "--config", "runtime=docker"],
    }
    # Snakemake's plan for each SLURM build (what it would run), before anything is built.
    plan = {}
    for name in trees:
        if name.startswith("slurm"):
            r = _run(["timeout", "-k", "10", "300", str(SNAKEMAKE), "-n", *args[name]], cwd=trees[name],
                     env=_env(trees[name]), timeout=330)
            assert r.returncode == 0, f"dry run of the {name} build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            plan[name] = _job_stats(r.stdout + r.stderr)
    workflow = _workflow_rules(trees["slurm"])
    t0 = time.monotonic()
    procs = {name: _snakemake(tree, args[name], base / f"{name}.log") for name, tree in trees.items()}
    result = {}
    for name, proc in procs.items():
        rc = proc.wait()
        result[name] = (trees[name], base / f"{name}.log", rc, time.monotonic() - t0)
    print("\n" + ", ".join(f"{n} build {r[3]:.0f}s (exit {r[2]})" for n, r in result.items()))
    result.update(docker_problem=docker_problem, plan=plan, workflow=workflow)
    return result


def _build(builds, name: str) -> tuple[Path, Path]:
    tree, log, rc, _ = builds[name]
    assert rc == 0, f"the {name} build failed (exit {rc}{', timed out' if rc in (124, 137) else ''}); log {log}:\n{_tail(log)}"
    return tree, log


def _check_went_through_sbatch(builds, name: str) -> dict[str, int]:
    """Every non-local job was one COMPLETED sbatch job with the profile's request; {rule: jobs}."""
    tree, log = _build(builds, name)
    workflow = builds["workflow"]
    text = log.read_text()
    m = re.search(r"SLURM run ID: (\S+)", text)
    assert m, f"the SLURM executor did not run; log:\n{_tail(log)}"
    run_id = m.group(1)
    # The workflow's own local rules, not the ones this run happened to log as local.
    local = {rule for rule, info in workflow.items() if info["local"]}
    assert local == LOCAL_RULES, f"local rules under the SLURM executor are {sorted(local)}, expected {sorted(LOCAL_RULES)}"
    stats = _job_stats(text)
    plan = builds["plan"][name]
    assert stats == plan, f"the run's jobs {stats} are not Snakemake's plan {plan}"
    # check_layout has a job only for a run with a layout problem (the demo has none).
    expected = set(workflow) - {"check_layout"}
    assert set(stats) == expected, f"rules without a job in the demo: {expected - set(stats)}"
    local_rules = set(re.findall(r"^localrule (\w+):$", text, re.M))
    assert local_rules == LOCAL_RULES - {"check_layout"}, f"jobs run locally: {sorted(local_rules)}, expected {sorted(LOCAL_RULES)}"
    assert not set(re.findall(r"^rule (\w+):$", text, re.M)) & LOCAL_RULES, "a local rule's job was submitted"
    submitted = dict(re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+) ", text, re.M))
    remote_jobs = {rule: n for rule, n in stats.items() if rule not in LOCAL_RULES}
    assert remote_jobs, f"no job was submitted to SLURM: {stats}"
    assert len(submitted) == sum(remote_jobs.values()) == sum(plan.values()) - sum(plan.get(r, 0) for r in LOCAL_RULES), (
        f"{len(submitted)} sbatch submissions for {sum(remote_jobs.values())} non-local jobs {remote_jobs}; plan {plan}"
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
        # The sbatch request is the rule's (attempt 1) and the site settings from the environment.
        res = workflow[rule]["resources"]
        assert row["ReqMem"] == f"{res['mem_mb'][0]}M", row
        assert row["Timelimit"] == _timelimit(res["runtime"][0]), row
        assert (row["Account"], row["Partition"], row["ReqCPUS"]) == (ACCOUNT, PARTITION, "1"), row
        # The plugin keeps each job's SLURM log (slurm-keep-successful-logs).
        logs = list((tree / ".snakemake/slurm_logs" / f"rule_{rule}").rglob(f"{row['JobIDRaw']}.log"))
        assert logs, f"no SLURM log for job {row['JobIDRaw']} ({rule})"
    assert per_rule == remote_jobs, f"sacct per rule {per_rule} != Snakemake's non-local jobs {remote_jobs}"
    assert len({row["Comment"] for row in rows}) == len(rows), "a job ran twice"
    print(f"\n{name}: {len(rows)} sbatch jobs {per_rule}; {sum(plan.values()) - len(rows)} local jobs {sorted(local_rules)}")
    return per_rule


def _job_digests(results: Path) -> set[str]:
    """The image digests the jobs recorded: per-job records and the report's provenance summary."""
    records = sorted((results / "provenance").rglob("*.json"))
    assert records, "no provenance records"
    digests = set()
    for path in records:
        found = re.findall(r'"image_digest":\s*"([^"]*)"', path.read_text())
        assert found, f"{path}: no image_digest"
        digests.update(found)
    summaries = sorted((results / "report").glob("*/provenance.json"))
    assert summaries, "no report provenance summary"
    for path in summaries:
        digests.update(json.loads(path.read_text())["job_image_digests"])
    return digests


def test_demo_workflow_on_slurm_matches_local_build(builds):
    local_tree, local_log = _build(builds, "local")
    assert "Using workflow specific profile profiles/default" in local_log.read_text(), "plain snakemake did not load profiles/default"
    slurm_tree, _ = _build(builds, "slurm")
    _check_went_through_sbatch(builds, "slurm")
    # Both runtime=local: the provenance records are part of the comparison, unchanged.
    assert _job_digests(slurm_tree / "results") == _job_digests(local_tree / "results") == {"local"}
    compared = _compare_results(slurm_tree / "results", local_tree / "results")
    print(f"{len(compared)} result files byte-identical to the local build (provenance included)")


@pytest.mark.docker
def test_slurm_jobs_run_in_pinned_docker_image(builds):
    """runtime=docker on the node: each SLURM job's shell runs `docker run <locked image ID>`."""
    if builds["docker_problem"]:
        msg = f"runtime=docker unavailable: {builds['docker_problem']}"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{msg} (CI=true: CI builds the images before this phase, so this is a failure)")
        pytest.skip(msg)
    local_tree, _ = _build(builds, "local")
    tree, log = _build(builds, "slurm-docker")
    _check_went_through_sbatch(builds, "slurm-docker")
    lock = json.loads((tree / "containers/images.lock.json").read_text())
    image_id = lock["images"]["pipeline"]["docker"]["id"]
    assert "run --rm" in log.read_text() and image_id in log.read_text(), "jobs were not docker run on the locked image"
    # Every job recorded the locked image (what `vmpower check-images` checks); locally: "local".
    assert _job_digests(tree / "results") == {image_id}, f"locked pipeline image is {image_id}"
    assert _job_digests(local_tree / "results") == {"local"}
    # The image ID (and the runtime named in images-checked.txt) is the only difference allowed,
    # and only in the provenance files; everything else byte for byte.
    compared = _compare_results(tree / "results", local_tree / "results",
                                same_in_provenance={image_id: "local", "runtime=docker": "runtime=local"})
    print(f"{len(compared)} result files identical to the local (runtime=local) build, provenance up to the image ID")


def test_retry_doubles_memory_and_time(cluster, tmp_path):
    """A job that fails on its first attempt is resubmitted with its attempt-2 request (twice the
    memory and wall time): a one-rule workflow with a copy of profiles/slurm (its retries), whose
    rule declares train_model's resources as the workflow's rules do (scaled by attempt), and
    which fails unless it was given at least twice its attempt-1 memory and runtime."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["retries"] >= 1
    res = _workflow_rules(REPO)["train_model"]["resources"]
    mem, minutes = res["mem_mb"][:2], res["runtime"][:2]
    shutil.copytree(REPO / "profiles/slurm", tmp_path / "profiles/slurm")
    (tmp_path / "Snakefile").write_text(f"""
rule train_model:
    output: "trained.txt"
    resources:
        mem_mb=lambda wildcards, attempt: {mem[0]} * attempt,
        runtime=lambda wildcards, attempt: {minutes[0]} * attempt,
    shell:
        "echo mem_mb={{resources.mem_mb}} runtime={{resources.runtime}}; "
        "test {{resources.mem_mb}} -ge {mem[1]} && test {{resources.runtime}} -ge {minutes[1]} "
        "&& echo {{resources.mem_mb}} {{resources.runtime}} > {{output}}"
""")
    log = tmp_path / "snakemake.log"
    t0 = time.monotonic()
    r = _run(["timeout", "-k", "10", "240", str(SNAKEMAKE), "--workflow-profile", "profiles/slurm", "--executor", "slurm",
              "--slurm-jobname-prefix", "vmpowerretry", *FAST_POLL],
             cwd=tmp_path, env=_env(tmp_path), timeout=270, log=log)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"the retried run failed (exit {r.returncode}); log {log}:\n{_tail(log)}"
    assert (tmp_path / "trained.txt").read_text().split() == [str(mem[1]), str(minutes[1])]
    m = re.search(r"SLURM run ID: (\S+)", log.read_text())
    assert m, f"the SLURM executor did not run; log:\n{_tail(log)}"
    rows = sorted(_sacct(m.group(1)), key=lambda row: int(row["JobIDRaw"]))
    got = [(row["State"], row["ReqMem"], row["Timelimit"], row["Comment"]) for row in rows]
    assert got == [
        ("FAILED", f"{mem[0]}M", _timelimit(minutes[0]), "rule_train_model"),
        ("COMPLETED", f"{mem[1]}M", _timelimit(minutes[1]), "rule_train_model"),
    ], got
    print(f"\nretry: {got} in {took:.0f}s")


def test_rules_declare_their_resources():
    """Resources are set once, in the rules: every rule that runs on SLURM declares mem_mb and
    runtime, attempt x its first request (a retry gets twice, then three times as much), and
    the profile sets none itself; a rule a site's set-resources names exists."""
    workflow = _workflow_rules(REPO)
    remote = {rule: info["resources"] for rule, info in workflow.items() if not info["local"]}
    assert remote and {"merge_run", "train_model", "export_models"} <= set(remote), sorted(remote)
    for rule, res in remote.items():
        for name, (first, second, third) in res.items():
            assert isinstance(first, int) and first > 0, f"{rule} declares no {name}: {res}"
            assert (second, third) == (2 * first, 3 * first), f"{rule} {name} does not scale with attempt: {res}"
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert not {"mem_mb", "runtime"} & set(profile.get("default-resources", {})), profile["default-resources"]
    named = set(profile.get("set-resources") or {}) | set(profile.get("set-threads") or {})
    assert named <= set(workflow), f"profiles/slurm names rules the workflow does not have: {named - set(workflow)}"


def test_plain_snakemake_uses_default_profile(tmp_path):
    """Without --workflow-profile, Snakemake loads profiles/default next to the Snakefile (the
    repository's layout): local execution with the profile's cores, and a failed job's log on
    the console (show-failed-logs: the one-line input error)."""
    assert (REPO / "Snakefile").is_file() and (REPO / "profiles/default/config.yaml").is_file()
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert "executor" not in profile or profile["executor"] == "local", profile
    shutil.copytree(REPO / "profiles/default", tmp_path / "profiles/default")
    error = "vmpower: data/raw/x/run1/vm_features_1.json: line 3 is not JSON"
    (tmp_path / "Snakefile").write_text(f"""
rule probe:
    output: "threads.txt"
    threads: 64
    shell: "echo {{threads}} > {{output}}"

rule broken:
    output: "broken.txt"
    log: "broken.log"
    shell: "echo '{error}' > {{log}}; exit 1"
""")
    env = _env(tmp_path)
    r = _run([str(SNAKEMAKE)], cwd=tmp_path, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Using workflow specific profile profiles/default" in out, out
    assert f"Provided cores: {profile['cores']}" in out and "SLURM" not in out, out
    assert (tmp_path / "threads.txt").read_text().strip() == str(profile["cores"])  # 64 scaled down
    r = _run([str(SNAKEMAKE), "broken.txt"], cwd=tmp_path, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert re.search(r"Logfile broken\.log:\n=+\n" + re.escape(error) + r"\n", out), out
    # Without the profile, Snakemake has no cores to run with: the profile is what made it work.
    r = _run([str(SNAKEMAKE), "--workflow-profile", "none", "--forceall"], cwd=tmp_path, env=env, timeout=120)
    assert r.returncode != 0 and "cores have to be specified" in r.stdout + r.stderr, r.stdout + r.stderr
