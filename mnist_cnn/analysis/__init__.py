"""Analysis of finished runs: reading them back, the selection rules and dynamics, paired
comparisons over seeds, the report's claims, results.md, --summarize and TensorBoard's event
files. Without torch (but for the event files). Never imports main."""
