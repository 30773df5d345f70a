# tests/cluster/cluster.mk - `make test-cluster`: qmoe-extract --shard on
# real engines (GNU parallel; a one-node Slurm cluster with munge) and
# zero-copy extraction on a loop-mounted XFS. As root it installs what is
# missing with apt-get: parallel slurmctld slurmd slurm-client munge
# xfsprogs. Included at the end of the Makefile.
.PHONY: test-cluster
test-cluster: all
	@QMOE_BUILD=$(abspath $(BUILD)) bash tests/cluster/run.sh
