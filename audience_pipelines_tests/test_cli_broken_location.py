"""The CLI against a webserver whose code location failed to load: it says so, with the first error line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audience_pipelines.webserver import LOCATION, Webserver
from audience_pipelines_tests.test_e2e import free_port, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
BROKEN = '''raise RuntimeError("defs/syncs/defs.yaml (document 2): sync 'vip_to_crm', key 'audience': no audience named 'vip'")
'''
WORKSPACE = f"""load_from:
  - python_file:
      relative_path: broken_defs.py
      location_name: {LOCATION}
"""
LOADED = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"""


def test_cli_names_a_code_location_that_failed_to_load(tmp_path):
    (tmp_path / "broken_defs.py").write_text(BROKEN)
    (tmp_path / "workspace.yaml").write_text(WORKSPACE)
    (tmp_path / "dagster_home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "AUDIENCE_PIPELINES_HOME": str(tmp_path / "data")}
    port = free_port()
    log = open(tmp_path / "webserver.log", "w")
    proc = subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        web = Webserver(f"http://127.0.0.1:{port}")
        wait_for("the webserver", lambda: all(e["loadStatus"] == "LOADED" for e in
                                               web.query(LOADED, {})["workspaceOrError"]["locationEntries"]))
        for args in (["pause", "high_value_to_crm"], ["resume", "high_value_to_crm"], ["resend", "high_value_to_crm"]):
            out = subprocess.run([str(BIN / "audience-pipelines"), *args, "--url", web.url], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 2, out.stdout + out.stderr
            assert "Traceback" not in out.stderr and "KeyError" not in out.stderr
            assert (f"code location '{LOCATION}' failed to load: RuntimeError: defs/syncs/defs.yaml (document 2): "
                    "sync 'vip_to_crm', key 'audience': no audience named 'vip'") in out.stderr, out.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
