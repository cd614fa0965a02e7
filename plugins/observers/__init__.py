"""Built-in calibration observers."""
