"""MkDocs hook: pages that list what the code declares are rendered from the declaration.

`<!-- settings-columns -->` in a page becomes a table of every run setting (one `runs/` column
each) from `sglr_ray.config`, so a setting added to the code appears in the docs with its help
text without anyone editing them.
"""

from __future__ import annotations

MARKER = "<!-- settings-columns -->"


def settings_table() -> str:
    """A Markdown table of the settings: column, type, default, whether it is part of a run's
    identity, and the setting's help (its unit where it has one)."""
    from sglr_ray.config import config_fields, setting_type

    rows = ["| column | type | default | identity | what it is |", "|---|---|---|---|---|"]
    for f in config_fields():
        if f.name == "run_id":  # documented with the recorded columns
            continue
        help_text = f.metadata["help"].replace("|", "\\|")
        identity = "yes" if f.metadata["identity"] else "no"
        default = "method default" if f.default is None else f"`{f.default!r}`"
        rows.append(f"| `{f.name}` | {setting_type(f).__name__} | {default} | {identity} | {help_text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
