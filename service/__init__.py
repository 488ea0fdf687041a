"""sslic service: the torch-free codec runtime (ONNX Runtime + constriction), its CLI and the HTTP API."""

__version__ = "0.1.0"
