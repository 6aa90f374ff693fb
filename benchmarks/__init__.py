"""hwnas benchmarks: ``python -m benchmarks NAME``; results land in benchmarks/results/."""
