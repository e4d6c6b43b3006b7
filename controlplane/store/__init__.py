"""State store: asyncpg pool, migrations, and one module per table group."""
