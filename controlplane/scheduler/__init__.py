"""Backup schedules: the loop that inserts a task for every due tick."""
