"""WSGI entry point serving moto's mock AWS APIs (used by gunicorn: ``tests.support.moto_app:app``).

gunicorn terminates TLS itself and closes connections with a proper close_notify, which
``moto_server --ssl-cert`` (werkzeug) does not: pgBackRest 2.45 on OpenSSL 3 rejects the latter.
"""

from __future__ import annotations

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
