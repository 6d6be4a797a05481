"""Training: a run's record (model.log, metrics.csv, config.json), its checkpoints and the epoch
loop's bookkeeping; a grid's orchestration; the optimizers, the distortions and torchrun's
workers. It writes run folders through mnist_cnn.runformat and never imports the analysis:
what follows a run's files (TensorBoard's) comes in from main.py as a callable.
Never imports main."""
