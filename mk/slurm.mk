# Single-node SLURM cluster from Debian's packages, for running the workflow through Snakemake's
# SLURM executor on this machine (docs/cluster.md). Needs root; no systemd.
.PHONY: cluster-up cluster-down cluster-status run-slurm test-slurm

cluster-up:
	bash tests/slurm/start-cluster.sh

cluster-down:
	bash tests/slurm/stop-cluster.sh

cluster-status:
	@sinfo -N -l; squeue; sacct -X --starttime now-1hour -o JobID,JobName%36,Comment%60,State,Elapsed

# The demo build, every non-local job submitted with sbatch (profiles/slurm).
run-slurm: demo-data cluster-up
	$(VENV)/bin/snakemake --workflow-profile profiles/slurm
	@$(VPY) -m vmpower report-paths --config config.yaml

# Bounded like the slurm phase of scripts/run-tests.sh (normally 6-9 min).
test-slurm: venv cluster-up
	timeout -k 30 1800 $(VPY) -m pytest -m slurm tests/slurm -q
