"""Workers: the ONNX Runtime session loaded once per process, batching cells across jobs."""
