"""Design-review reports: Markdown and PNG figures (the only place matplotlib is imported)."""
