"""Per-format indexers: each turns a parsed spec into a :class:`~radprobe.data.formats.common.Source`.

``manifest`` (csv:, parquet:), ``folder`` (folder:, nifti:, dicom: share its layouts), ``dicom`` (series
detection and patient ids), ``npz`` (MedMNIST-style arrays); ``common`` holds the shared types and
helpers. The dispatcher that picks one is :mod:`radprobe.data.index`; presets import these modules,
never the dispatcher.
"""
