"""radprobe: measure how well vision foundation models serve radiology."""

__version__ = "0.1.0"
