"""Scripts that measure main.py (bench, the usual DataLoader baseline, non-MNIST digits, a GPU
check); run from the clone's root as `python -m tools.NAME`."""
