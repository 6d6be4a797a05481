"""Scripts that measure main.py (bench, the usual DataLoader baseline, non-MNIST digits, the
page's pictures, a GPU check); run from the clone's root as `python -m tools.NAME`."""
