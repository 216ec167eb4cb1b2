"""The embedding service: FastAPI API, job queue (in-process or RQ on Redis) and ONNX Runtime workers."""
