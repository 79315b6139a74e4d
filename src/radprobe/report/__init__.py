"""Reports of run directories: Markdown and self-contained HTML with tables and plots."""
