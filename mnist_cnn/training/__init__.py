"""Training: the settings, each declared once; a run's record (model.log, metrics.csv,
config.json), its checkpoints and the epoch loop's bookkeeping; the optimizer and its schedule,
the distortions, torchrun's workers and the learning-rate range test. Never imports main."""
