"""Pure types and rules. Nothing here imports from the rest of `bot` or does I/O."""
