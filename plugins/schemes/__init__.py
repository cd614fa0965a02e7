"""Built-in quantization schemes."""
