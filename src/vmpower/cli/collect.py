"""``vmpower collect vm|host|run``: collect training data (the collectors are vmpower.collect).

* ``vm``   runs inside the VM: OS metrics, perf counters and stress-ng workloads.
* ``host`` runs on the bare-metal host: the VM's power from Kepler's /metrics.
* ``run``  runs on the host: starts both over SSH in sync and gathers a run directory.

Heavy imports stay inside the functions so that ``vmpower --help`` stays fast.
"""

from __future__ import annotations

from vmpower import argtypes
from pathlib import Path

DEFAULT_VM_KEPLER_URL = "http://localhost:28282/metrics"
DEFAULT_HOST_KEPLER_URL = "http://localhost:28283/metrics"


def _add_vm(sub) -> None:
    p = sub.add_parser("vm", help="guest feature collector (run inside the VM)",
                       description="Collect VM features (OS metrics, perf counters) in bracketed "
                                   "windows, optionally under stress-ng workloads.")
    p.add_argument("--duration", type=argtypes.non_negative, default=300.0,
                   help="collection duration in seconds (default: 300; 0 = until stopped)")
    p.add_argument("--interval", type=argtypes.positive, default=1.0,
                   help="collection interval in seconds (default: 1.0)")
    p.add_argument("--output", default="data/vm_features.json",
                   help="output file (JSON Lines while running, a JSON array at the end; "
                        "default: data/vm_features.json)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="where the CSV copy of the samples goes, written at the end (default: the "
                        "output's name with .csv: JSON and CSV, as the original collector)")
    p.add_argument("--no-csv", action="store_true", help="write no CSV copy")
    p.add_argument("--kepler-url", default=DEFAULT_VM_KEPLER_URL,
                   help=f"Kepler inside the VM, for process CPU seconds (default: {DEFAULT_VM_KEPLER_URL}); "
                        "'none' disables it")
    p.add_argument("--stress-workload", "--workloads", dest="workloads", default="none",
                   help="workload or sequence: cpu_cycling | cpu_cycling:60,cpu_intensive:45 | "
                        "cpu_cycling,cpu_intensive (equal split); loops until the duration ends")
    p.add_argument("--cpu-intensive-duration", type=argtypes.positive, default=None,
                   help="seconds of cpu_intensive in a sequence that names it without a duration")
    p.add_argument("--list-workloads", action="store_true", help="list the stress workloads and exit")
    p.add_argument("--vm-name", default=None, help="VM name, recorded in the log")
    p.add_argument("--no-sync", action="store_true",
                   help="disable synchronized bracketed windows (sleep the interval between "
                        "samples instead of absolute deadlines; drifts)")
    p.add_argument("--no-perf", action="store_true", help="do not use perf (counters recorded as null)")
    p.add_argument("--start-at", type=float, default=None, metavar="EPOCH",
                   help="wait until this epoch time before the first window (used by `collect run`)")
    p.add_argument("--log-file", default="logs/vm_feature_collection.log", help="log file")
    p.add_argument("--verbose", action="store_true", help="verbose logging")
    p.set_defaults(func=cmd_collect_vm)


def _add_host(sub) -> None:
    p = sub.add_parser("host", help="host power collector (Kepler /metrics on the bare-metal host)",
                       description="Scrape Kepler's VM power and write the host power file.")
    p.add_argument("--vm-names", "--vm-name", dest="vm_names", default=None, metavar="NAMES",
                   help="comma-separated VM names (exact: Kepler's vm_name, or for Kepler 0.7 the name "
                        "in its libvirt vm_id; a full vm_id also works) whose power is summed")
    p.add_argument("--vm-pattern", action="append", default=[], metavar="GLOB",
                   help="also sum VMs whose name matches this glob pattern, e.g. 'fedora*' (repeatable); "
                        "with neither option every running VM is summed")
    p.add_argument("--kepler-url", default=DEFAULT_HOST_KEPLER_URL,
                   help=f"Kepler metrics endpoint (default: {DEFAULT_HOST_KEPLER_URL})")
    p.add_argument("--duration", type=argtypes.non_negative, default=300.0,
                   help="collection duration in seconds (default: 300; 0 = until stopped)")
    p.add_argument("--interval", type=argtypes.positive, default=0.1,
                   help="scrape interval in seconds (default: 0.1)")
    p.add_argument("--timeout", type=argtypes.positive, default=1.0, help="HTTP timeout per scrape (default: 1.0 s)")
    p.add_argument("--output", default="data/bm_power.csv",
                   help="output file, .csv or .json (default: data/bm_power.csv)")
    p.add_argument("--start-at", type=float, default=None, metavar="EPOCH",
                   help="wait until this epoch time before the first scrape")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="config.yaml whose limits section applies (max_http_response_bytes; default: the built-in limits)")
    p.add_argument("--log-file", default="logs/bm_power_collection.log", help="log file")
    p.add_argument("--verbose", action="store_true", help="verbose logging")
    p.set_defaults(func=cmd_collect_host)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="orchestrate guest + host collection over SSH",
                       description="Start the guest collector (and workloads) over SSH and the host "
                                   "collector here, in sync; gather data/raw/<node_type>/<run_id>/.")
    p.add_argument("--vm-name", required=True,
                   help="VM name as Kepler reports it, matched exactly (power filter); "
                        "a name starting with '-' needs the form --vm-name=-name")
    p.add_argument("--vm-host", required=True, help="VM IP or host name for SSH")
    p.add_argument("--vm-user", default="root", help="SSH user (default: root)")
    p.add_argument("--vm-port", type=int, default=22, help="SSH port (default: 22)")
    p.add_argument("--vm-key-file", default=None, help="SSH private key (default: agent / ~/.ssh keys)")
    p.add_argument("--known-hosts", default=None,
                   help="known_hosts file to verify the VM's host key (in addition to the system ones)")
    p.add_argument("--insecure-accept-host-key", action="store_true",
                   help="accept an unknown VM host key for this run, without saving it anywhere "
                        "(DANGEROUS: no protection against MITM)")
    p.add_argument("--vm-project-path", default="/root/vmpower",
                   help="vmpower checkout inside the VM (default: /root/vmpower)")
    p.add_argument("--vm-python", default=None,
                   help="Python in the VM (default: <project>/.venv/bin/python if present, else python3)")
    p.add_argument("--duration", type=argtypes.positive, default=800.0, help="collection duration (default: 800 s)")
    p.add_argument("--workloads", default="cpu_cycling,cpu_intensive",
                   help="workload sequence for the guest (default: cpu_cycling,cpu_intensive)")
    p.add_argument("--cpu-intensive-duration", type=argtypes.positive, default=None,
                   help="seconds of cpu_intensive when --workloads names it without a duration")
    p.add_argument("--output-prefix", default="training", help="output file prefix (default: training)")
    p.add_argument("--interval", type=argtypes.positive, default=1.0, help="guest sample interval (default: 1.0 s)")
    p.add_argument("--host-interval", type=argtypes.positive, default=0.1,
                   help="host Kepler scrape interval (default: 0.1 s)")
    p.add_argument("--kepler-url", default=DEFAULT_HOST_KEPLER_URL,
                   help=f"host Kepler endpoint (default: {DEFAULT_HOST_KEPLER_URL})")
    p.add_argument("--vm-kepler-url", default=DEFAULT_VM_KEPLER_URL,
                   help=f"Kepler inside the VM (default: {DEFAULT_VM_KEPLER_URL})")
    p.add_argument("--data-dir", default="data/raw", help="raw data root (default: data/raw)")
    p.add_argument("--node-type", default=None,
                   help="node type directory (default: derived from the host CPU model)")
    p.add_argument("--run-id", default=None, help="run directory name (default: <prefix>_<timestamp>)")
    p.add_argument("--start-delay", type=argtypes.non_negative, default=3.0,
                   help="seconds between launching and the common start instant (default: 3)")
    p.add_argument("--connect-timeout", type=argtypes.positive, default=15.0, help="SSH connect timeout")
    p.add_argument("--log-file", default="logs/orchestrator.log", help="log file")
    p.add_argument("--verbose", action="store_true", help="verbose logging")
    p.set_defaults(func=cmd_collect_run)


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="collect training data (vm | host | run)",
                              description="Collect training data: `vm` inside the guest, `host` from Kepler "
                                          "on the bare-metal host, `run` both at once over SSH.")
    sub = p.add_subparsers(dest="collect_command", metavar="{vm,host,run}")
    _add_vm(sub)
    _add_host(sub)
    _add_run(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def csv_path(output: str, csv: str | None, no_csv: bool) -> str | None:
    """The CSV copy: --csv, else beside the JSON output (the seed's collector saves both)."""
    if no_csv:
        return None
    if csv:
        return csv
    out = Path(output)
    return None if out.suffix.lower() == ".csv" else str(out.with_suffix(".csv"))


def cmd_collect_vm(args) -> int:
    import threading

    from vmpower.collect.common import setup_file_log, stop_on_signals
    from vmpower.collect.features import FeatureCollector
    from vmpower.collect.stress import list_workloads

    if args.list_workloads:
        print(list_workloads())
        return 0
    setup_file_log(args.log_file, args.verbose)
    collector = FeatureCollector(args.output, interval=args.interval, duration=args.duration or None,
                                 workloads=args.workloads, cpu_intensive_duration=args.cpu_intensive_duration,
                                 kepler_url=args.kepler_url, use_perf=not args.no_perf, sync=not args.no_sync,
                                 start_at=args.start_at, csv_path=csv_path(args.output, args.csv, args.no_csv),
                                 vm_name=args.vm_name)
    stopped = threading.Event()

    def on_stop():
        stopped.set()
        collector.stop()

    with stop_on_signals(on_stop):
        records = collector.run()
    print(f"{len(records)} samples -> {args.output}" + (f" and {collector.csv_path}" if collector.csv_path else "")
          + (" (stopped early)" if stopped.is_set() else ""))
    return 0


def cmd_collect_host(args) -> int:
    from vmpower import limits
    from vmpower.collect.common import setup_file_log, stop_on_signals
    from vmpower.collect.host import HostCollector
    from vmpower.errors import InputError

    setup_file_log(args.log_file, args.verbose)
    names = [n.strip() for n in (args.vm_names or "").split(",") if n.strip()]
    cap = limits.load(getattr(args, "config", None)).max_http_response_bytes
    collector = HostCollector(args.kepler_url, args.output, vm_names=names, vm_patterns=args.vm_pattern,
                              interval=args.interval, duration=args.duration or None, timeout=args.timeout,
                              start_at=args.start_at, max_response_bytes=cap)
    with stop_on_signals(collector.stop):
        rows = collector.run()
    print(f"{rows} rows -> {args.output} ({len(collector.gaps)} gaps)")
    if rows == 0:
        hint = "; names match exactly, globs go in --vm-pattern" if any(set(n) & set("*?[") for n in names) else ""
        raise InputError(args.kepler_url, f"no power rows collected (Kepler unreachable or no matching VM{hint})")
    return 0


def cmd_collect_run(args) -> int:
    from vmpower.collect.common import setup_file_log, stop_on_signals
    from vmpower.collect.orchestrate import Orchestrator

    setup_file_log(args.log_file, args.verbose)
    # the host collector also keeps its own log, as when it runs alone
    setup_file_log(Path(args.log_file).with_name("bm_power_collection.log"), args.verbose,
                   logger_name="vmpower.collect.host")
    orch = Orchestrator(vm_name=args.vm_name, vm_host=args.vm_host, vm_user=args.vm_user, vm_port=args.vm_port,
                        vm_key_file=args.vm_key_file, known_hosts=args.known_hosts,
                        insecure_accept_host_key=args.insecure_accept_host_key,
                        vm_project_path=args.vm_project_path, vm_python=args.vm_python,
                        duration=args.duration, workloads=args.workloads,
                        cpu_intensive_duration=args.cpu_intensive_duration, output_prefix=args.output_prefix,
                        interval=args.interval, host_interval=args.host_interval, kepler_url=args.kepler_url,
                        vm_kepler_url=args.vm_kepler_url, data_dir=args.data_dir, node_type=args.node_type,
                        run_id=args.run_id, start_delay=args.start_delay, connect_timeout=args.connect_timeout,
                        verbose=args.verbose)
    with stop_on_signals(orch.stop):
        code = orch.run()
    print(f"run directory: {orch.run_dir}" + ("" if code == 0 else " (incomplete, see logs/orchestrator.log)"))
    return code
