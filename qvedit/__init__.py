"""qvedit: video editing with Qwen-Image-Edit-2509 and test-time loss guidance (inference only)."""

__version__ = "0.1.0"
