"""`python -m sglr_ray ...` is the CLI (the form `ray job submit -- python -m sglr_ray run ...` uses)."""

from sglr_ray.cli import entry

if __name__ == "__main__":
    entry()
