"""The read-only web dashboard: server-rendered pages of databases, backups and tasks."""
