"""The lowest floor: process runtime facts every room may import (device, environment capture,
threads, torchrun detection). ``radprobe.config``, ``radprobe.errors``, ``radprobe.utils`` and
``radprobe.progress`` share this floor."""
