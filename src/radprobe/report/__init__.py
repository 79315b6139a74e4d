"""Reports of run directories (Markdown and self-contained HTML with tables, CI plots, few-shot
curves, overlays, compute and published numbers) and the offline demo.

``radprobe report RUN_DIR`` -> :func:`radprobe.report.build.build_report`;
``radprobe demo [--quick]`` -> :func:`radprobe.demo.run_demo`.
"""
