"""``python -m wcnerf.conditioning``: print the registry (name and description)."""

from .api import available

if __name__ == "__main__":
    entries = available()
    width = max(map(len, entries))
    for name, description in entries.items():
        print(f"{name:<{width}}  {description}")
