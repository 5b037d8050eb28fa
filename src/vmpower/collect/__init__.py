"""The collectors: the guest's features (features, sampler, procfs, perf, stress), the host's
power from Kepler (host, kepler) and the SSH orchestrator of a run (orchestrate, machine).
Their ``vmpower collect`` subcommands are in the CLI layer (vmpower.cli.collect).
"""
