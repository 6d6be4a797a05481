"""Analysis of finished runs: reading them back, the selection rules and dynamics, paired
comparisons over seeds, the report's claims, results.md, --summarize, TensorBoard's event files
and the range test's curves. It reads run folders through mnist_cnn.runformat and never imports
training. Without torch (but for the event files). Never imports main."""
