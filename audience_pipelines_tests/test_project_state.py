"""Every command finds the project's state and Dagster instance in the checkout, from any directory.

Each test works on a copy of the checkout (imported through PYTHONPATH) so it never touches the
real checkout's `.audience_pipelines/` or `.dagster_home/`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from audience_pipelines.engine import ConfigError
from audience_pipelines.project import find_state_root, state_root
from audience_pipelines.resources import AudienceStorage

REPO = Path(__file__).parents[1]
SCRIPTS = Path(sysconfig.get_path("scripts"))
COMPONENTS = {f"audience_pipelines.components.{name}"
              for name in ("Audience", "AudienceSync", "Destination", "Entity", "Settings", "Warehouse")}


def copy_checkout(dest: Path, *, as_checkout: bool = True) -> Path:
    """The package (and, as a checkout, the files beside it) copied to dest."""
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "audience_pipelines", dest / "audience_pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if as_checkout:
        for name in ("pyproject.toml", "workspace.yaml", "dagster.yaml", "README.md"):
            shutil.copy(REPO / name, dest / name)
    return dest


def clean_env(checkout: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "AUDIENCE_PIPELINES_HOME", "AUDIENCE_PIPELINES_HISTORY_URL", "VIRTUAL_ENV")
           and not k.startswith("DAGSTER_DG_")}
    return {**env, "PYTHONPATH": str(checkout), **extra}


def python(code: str, checkout: Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean_env(checkout, **extra),
                          capture_output=True, text=True, timeout=120)


def script(name: str, *args: str, checkout: Path, cwd: Path, timeout: float = 300, **extra: str):
    exe = SCRIPTS / name
    assert exe.exists(), f"{exe} is missing: reinstall the project (pip install -e .) to get its scripts"
    return subprocess.run([str(exe), *args], cwd=cwd, env=clean_env(checkout, **extra),
                          capture_output=True, text=True, timeout=timeout)


ROOTS = """
from audience_pipelines.resources import AudienceStorage
from audience_pipelines.project import find_state_root
print(AudienceStorage().root)
print(find_state_root())
"""


# -- item 4: one state folder, found the same way by the code location and the CLI --------------

def test_code_location_and_readers_find_the_checkouts_state_from_any_directory(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (checkout, elsewhere, checkout / "audience_pipelines" / "defs"):
        out = python(ROOTS, checkout, cwd)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(checkout / ".audience_pipelines")] * 2
    assert not (elsewhere / ".audience_pipelines").exists()


def test_a_reader_names_where_it_looked_instead_of_creating_an_empty_folder(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = python("from audience_pipelines.project import find_state_root\nfind_state_root()", checkout, elsewhere)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("audience_pipelines.contract.errors.ConfigError: ")
    assert str(checkout / ".audience_pipelines") in last and "AUDIENCE_PIPELINES_HOME" in last
    assert not (checkout / ".audience_pipelines").exists() and not (elsewhere / ".audience_pipelines").exists()


def test_a_reader_given_a_missing_home_names_it_and_the_variable(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("AUDIENCE_PIPELINES_HOME", str(missing))
    with pytest.raises(ConfigError) as err:
        find_state_root()
    assert str(missing) in str(err.value) and "$AUDIENCE_PIPELINES_HOME" in str(err.value)
    assert not missing.exists()
    missing.mkdir()
    assert find_state_root() == missing == AudienceStorage().root


def test_the_home_setting_wins_over_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIENCE_PIPELINES_HOME", str(tmp_path / "from_env"))
    assert AudienceStorage(home=str(tmp_path / "set")).root == tmp_path / "set"
    assert state_root() == tmp_path / "from_env"


def test_installed_outside_a_checkout_state_defaults_to_the_current_directory(tmp_path):
    installed = copy_checkout(tmp_path / "site-packages", as_checkout=False)
    cwd = tmp_path / "work"
    cwd.mkdir()
    missing = python("from audience_pipelines.project import find_state_root\nfind_state_root()", installed, cwd)
    assert "not a source checkout" in missing.stderr and str(cwd / ".audience_pipelines") in missing.stderr
    out = python(ROOTS, installed, cwd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(cwd / ".audience_pipelines")] * 2


# -- item 3: one persistent Dagster instance per checkout, configured by its dagster.yaml --------

INSTANCE = """
import os
from audience_pipelines.project import dagster_home
os.environ["DAGSTER_HOME"] = str(dagster_home())
import dagster as dg
with dg.DagsterInstance.get() as instance:
    print(os.environ["DAGSTER_HOME"], instance.get_settings("concurrency")["runs"]["max_concurrent_runs"],
          type(instance.run_coordinator).__name__, instance.run_monitoring_enabled)
"""


def test_the_instance_lives_in_the_checkout_and_follows_its_dagster_yaml(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = python(INSTANCE, checkout, elsewhere)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(checkout / ".dagster_home"), "4", "QueuedRunCoordinator", "True"]
    linked = checkout / ".dagster_home" / "dagster.yaml"
    assert linked.resolve() == (checkout / "dagster.yaml").resolve()

    shipped = checkout / "dagster.yaml"
    shipped.write_text(shipped.read_text().replace("max_concurrent_runs: 4", "max_concurrent_runs: 7"))
    out = python(INSTANCE, checkout, checkout)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "7"


def test_a_stale_copy_of_dagster_yaml_in_the_instance_is_replaced_and_kept_aside(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / ".dagster_home").mkdir()
    (checkout / ".dagster_home" / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    out = python(INSTANCE, checkout, checkout)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:3] == ["4", "QueuedRunCoordinator"]
    assert (checkout / ".dagster_home" / "dagster.yaml.bak").read_text() == "telemetry: {enabled: false}\n"


def test_audience_dagster_runs_the_dagster_cli_on_the_checkouts_instance(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = script("audience-dagster", "instance", "info", checkout=checkout, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert f"$DAGSTER_HOME: {checkout / '.dagster_home'}\n" in out.stdout
    assert "max_concurrent_runs: 4" in out.stdout

    production = tmp_path / "production_home"
    production.mkdir()
    shutil.copy(checkout / "dagster.yaml", production / "dagster.yaml")
    out = script("audience-dagster", "instance", "info", checkout=checkout, cwd=elsewhere,
                 DAGSTER_HOME=str(production))
    assert out.returncode == 0, out.stderr
    assert f"$DAGSTER_HOME: {production}\n" in out.stdout


def test_outside_a_checkout_the_launcher_asks_for_dagster_home(tmp_path):
    installed = copy_checkout(tmp_path / "site-packages", as_checkout=False)
    out = script("audience-dg", "dev", checkout=installed, cwd=tmp_path)
    assert out.returncode == 2
    assert "set DAGSTER_HOME to the folder holding your dagster.yaml" in out.stderr


# -- item 16: dg is what the quick start runs, so it is installed with the project ---------------

def test_dg_is_installed_with_the_project_in_dagsters_release_line():
    requirements = [Requirement(r) for r in importlib.metadata.requires("audience_pipelines")]
    main = {r.name: r for r in requirements if r.marker is None}
    assert "dagster-dg-cli" in main, "dg is only in an extra: `pip install -e .` would not install it"
    assert main["dagster-dg-cli"].specifier == main["dagster"].specifier


# -- item 17: each component once, under the name the README's YAML uses ------------------------

def test_dg_lists_each_component_once_under_the_readme_name():
    out = subprocess.run([str(SCRIPTS / "dg"), "list", "components", "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    keys = [item["key"] for item in json.loads(out.stdout)["items"]]
    ours = [k for k in keys if k.startswith("audience_pipelines.")]
    assert sorted(ours) == sorted(COMPONENTS), ours
    readme_types = set(re.findall(r"type: (audience_pipelines\.components\.\w+)", (REPO / "README.md").read_text()))
    assert readme_types == COMPONENTS


# -- item 18: the check validates what loading validates, and says success only at the end -------

def break_yaml(checkout: Path, file: str, old: str, new: str) -> None:
    path = checkout / "audience_pipelines" / "defs" / file / "defs.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("file, old, new, expected", [
    ("syncs", "audience: high_value_customers", "audience: vip",
     "defs/syncs/defs.yaml (document 1): sync 'high_value_to_crm', key 'audience': no audience named 'vip'"),
    # the first of several documents of one type: dg's own schema pass checks only the last
    ("syncs", "  mode: mirror\n", "  mode: mirror\n  batch_sise: 10\n", "attributes.batch_sise at "),
])
def test_check_defs_fails_on_what_loading_refuses_without_a_success_line(tmp_path, file, old, new, expected):
    checkout = copy_checkout(tmp_path / "checkout")
    break_yaml(checkout, file, old, new)
    out = script("audience-dg", "check", "defs", checkout=checkout, cwd=checkout)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert expected in text
    assert "successfully" not in text


def test_check_defs_passes_on_the_demo_from_any_directory(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    out = script("audience-dg", "check", "defs", checkout=checkout, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "All definitions loaded successfully."


# -- items 3 and 16 end to end: the quick start's UI sees a shell run, before and after a restart --

RUNS = "{ runsOrError { ... on Runs { results { runId status } } } }"
LOADED = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
PLOTS = """{ assetOrError(assetKey: {path: ["audiences", "high_value_customers"]}) {
  ... on Asset { assetMaterializations { runId metadataEntries { label } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    return httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()["data"]


class DevServer:
    """`audience-dg dev` as the README starts it; stopped like Ctrl-C, killed if it hangs."""

    def __init__(self, checkout: Path, log: Path):
        self.port = free_port()
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([str(SCRIPTS / "audience-dg"), "dev", "-h", "127.0.0.1", "-p", str(self.port)],
                                         cwd=checkout, env=clean_env(checkout), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                entries = graphql(self.port, LOADED)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise AssertionError(f"dg dev did not load in 180 s:\n{log.read_text()}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_shell_run_shows_in_the_quick_start_ui_and_survives_a_restart(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    server = DevServer(checkout, tmp_path / "dev1.log")
    try:
        assert graphql(server.port, RUNS)["runsOrError"]["results"] == []
        launched = script("audience-dg", "launch", "--assets", "audiences/high_value_customers",
                          checkout=checkout, cwd=checkout, timeout=600)
        assert launched.returncode == 0, launched.stderr[-3000:]
        runs = graphql(server.port, RUNS)["runsOrError"]["results"]
        assert [r["status"] for r in runs] == ["SUCCESS"]
    finally:
        server.stop()
    first_log = (tmp_path / "dev1.log").read_text()
    assert "SupersessionWarning" not in first_log and "Using temporary directory" not in first_log

    server = DevServer(checkout, tmp_path / "dev2.log")
    try:
        assert graphql(server.port, RUNS)["runsOrError"]["results"] == runs
        plotted = graphql(server.port, PLOTS)["assetOrError"]["assetMaterializations"]
        assert [m["runId"] for m in plotted] == [runs[0]["runId"]]
        assert {"dagster/row_count", "rows_returned"} <= {e["label"] for e in plotted[0]["metadataEntries"]}
    finally:
        server.stop()
    assert (checkout / ".audience_pipelines" / "audiences" / "high_value_customers" / "membership.parquet").exists()
