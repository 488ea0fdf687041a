"""sslic model side: the PyTorch codec, its self-supervised backbone, training and export."""
