"""Verifiable tasks: :mod:`zoo.tasks.base` (what a problem and a task are, a leaf every package may import) and
:mod:`zoo.tasks.registry` (the named tasks, their generators, readers and rewards)."""
