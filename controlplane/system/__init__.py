"""Seams to the operating system: subprocesses, private files, the clock."""
