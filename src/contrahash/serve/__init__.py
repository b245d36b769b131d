"""The search service: ``contrahash serve DIR`` (FastAPI app, web page, JSON API).

``create_app(collection, settings)`` builds the app for any object satisfying
:class:`contrahash.serve.types.Collection`; the ``serve`` command (:mod:`contrahash.cli.serve`)
runs it with uvicorn.
FastAPI is imported only by :mod:`contrahash.serve.app`, so importing this package (or
:mod:`contrahash.serve.types`) does not need the web dependencies.
"""

from contrahash.serve.settings import ServeSettings
from contrahash.serve.types import Collection, Hit, InvalidImageError, Item

__all__ = ["Collection", "Hit", "InvalidImageError", "Item", "ServeSettings", "create_app"]


def __getattr__(name: str):  # noqa: ANN202 - lazy import keeps FastAPI optional
    if name == "create_app":
        from contrahash.serve.app import create_app

        return create_app
    raise AttributeError(name)
