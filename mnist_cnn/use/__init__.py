"""Using a trained model: --predict (digit reading from photos and drawings), --serve (the
page and its JSON API), --export (ONNX and the offline page). Never imports main."""
