from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
import sqlalchemy as sa

PG_URL_ENV = "AUDIENCE_PIPELINES_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh AUDIENCE_PIPELINES_HOME and DAGSTER_HOME for one test."""
    data = tmp_path / "home"
    dagster_home = tmp_path / "dagster_home"
    data.mkdir()
    dagster_home.mkdir()
    monkeypatch.setenv("AUDIENCE_PIPELINES_HOME", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    for var in ("AUDIENCE_PIPELINES_WAREHOUSE_URL", "AUDIENCE_PIPELINES_CRM_URL"):
        monkeypatch.delenv(var, raising=False)
    return data


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        message = (f"PostgreSQL is not reachable at {url} ({type(exc).__name__}). Start it, or point "
                   f"{PG_URL_ENV} at a database the tests may create schemas in.")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def pg_schema(pg_url):
    """A throwaway schema; yields (url whose search_path is that schema, schema name)."""
    schema = f"ap_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False), schema
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


FAULT_OUTCOMES: list = []  # gathered from test reports, so tests run in worker processes (xdist) count too


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    from audience_pipelines_tests.faults import RESULTS

    before = len(RESULTS)
    yield
    item.user_properties += [("fault_outcome", dataclasses.asdict(o)) for o in RESULTS[before:]]


def pytest_runtest_logreport(report):
    if report.when == "call":
        FAULT_OUTCOMES.extend(value for name, value in report.user_properties if name == "fault_outcome")


def pytest_terminal_summary(terminalreporter):
    from audience_pipelines_tests.faults import Outcome, table_text

    if FAULT_OUTCOMES:
        terminalreporter.write_sep("=", "fault matrix: what was tried and whether the promised state held")
        terminalreporter.write_line(table_text([Outcome(**o) for o in FAULT_OUTCOMES]))
