"""Fixtures for the storage tests: one store per backend with private table names."""

from __future__ import annotations

import pytest
from storage_support import BACKENDS, backend_url, open_store, suffix_tables

from presenced.storage import Store, StoreError


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
async def make_store(backend, tmp_path):
    """Factory: a connected store on this test's private tables (dropped afterwards).

    Several calls give several stores (connections) on the same tables.
    """
    tables = suffix_tables()
    url = backend_url(backend, tmp_path)
    stores: list[Store] = []

    async def make(**kw) -> Store:
        store = await open_store(kw.pop("url", url), backend, tables=kw.pop("tables", tables))
        stores.append(store)
        return store

    yield make
    if stores and backend in ("postgresql", "mysql"):
        try:
            await stores[0].drop_tables()
        except StoreError:
            pass
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store) -> Store:
    s = await make_store()
    await s.ensure_schema()
    return s
