"""HTTP API: Litestar app factory, controllers, error mapping and bearer-token auth."""
