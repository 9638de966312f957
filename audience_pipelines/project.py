"""Where the project keeps its files and its Dagster instance, whichever directory a command runs from.

In a source checkout (pyproject.toml and workspace.yaml beside the `audience_pipelines` package) both
live in the checkout: `.audience_pipelines/` (memberships, snapshots, run history) and
`.dagster_home/` (the Dagster instance, configured by the checkout's `dagster.yaml`). Installed
elsewhere, the files default to `./.audience_pipelines` and the instance needs `$DAGSTER_HOME`.

`audience-dg` and `audience-dagster` are `dg` and `dagster` with that instance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HOME_ENV = "AUDIENCE_PIPELINES_HOME"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
STATE_DIR = ".audience_pipelines"
INSTANCE_DIR = ".dagster_home"
INSTANCE_CONFIG = "dagster.yaml"
NO_INSTANCE = (f"set {DAGSTER_HOME_ENV} to the folder holding your {INSTANCE_CONFIG}: audience_pipelines is not "
               "run from a source checkout, so it has no instance folder of its own")
# dg's schema pass checks only the last YAML document of each component type and prints its success
# line before definitions load; the load checks every document and the cross references.
DG_SKIP_SCHEMA_PASS = {"DAGSTER_DG_CHECK_DEFS_CHECK_YAML": "false", "DAGSTER_DG_DEV_CHECK_YAML": "false"}


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when it is installed as a distribution."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not (pyproject.is_file() and (root / "workspace.yaml").is_file()):
        return None
    if 'name = "audience_pipelines"' not in pyproject.read_text(encoding="utf-8"):
        return None
    return root


def _config_error(message: str) -> Exception:
    from audience_pipelines.engine import ConfigError  # the engine imports pyarrow: only when failing

    return ConfigError(message)


def state_root(home: str | os.PathLike | None = None) -> Path:
    """The folder holding memberships, snapshots and run history (absolute; not created).

    `home` if given, else $AUDIENCE_PIPELINES_HOME, else `.audience_pipelines` in the source checkout,
    else in the current directory.
    """
    chosen = home or os.environ.get(HOME_ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    return (checkout_root() or Path.cwd()).absolute() / STATE_DIR


def find_state_root(home: str | os.PathLike | None = None) -> Path:
    """`state_root(home)` if it exists; for readers, which must not create an empty one.

    Raises ConfigError naming the folder looked at, why that one, and the variable to set.
    """
    root = state_root(home)
    if root.is_dir():
        return root
    if home:
        why = "the folder given"
    elif os.environ.get(HOME_ENV):
        why = f"${HOME_ENV}"
    elif checkout_root():
        why = f"the checkout's default; ${HOME_ENV} is not set"
    else:
        why = (f"the default in the current directory: audience_pipelines is not a source checkout and "
               f"${HOME_ENV} is not set")
    message = (f"no audience_pipelines state at {root} ({why}): nothing has run with it yet, or the code "
               f"location keeps its files elsewhere; set {HOME_ENV} to the folder it uses")
    here = Path.cwd().absolute() / STATE_DIR
    if here != root and here.is_dir():
        message += f" (there is one at {here})"
    raise _config_error(message)


def dagster_home() -> Path:
    """The Dagster instance folder: $DAGSTER_HOME, else `.dagster_home` in the source checkout.

    The checkout's folder is created on first use and its dagster.yaml links to the checkout's own
    (a copy, renewed each call, where symlinks are unavailable), so edits there take effect.
    Raises ConfigError outside a checkout when $DAGSTER_HOME is not set.
    """
    if os.environ.get(DAGSTER_HOME_ENV):
        return Path(os.environ[DAGSTER_HOME_ENV]).expanduser()
    root = checkout_root()
    if root is None:
        raise _config_error(NO_INSTANCE)
    home = root / INSTANCE_DIR
    home.mkdir(exist_ok=True)
    _use_shipped_config(root / INSTANCE_CONFIG, home / INSTANCE_CONFIG)
    return home


def _use_shipped_config(shipped: Path, linked: Path) -> None:
    if linked.is_symlink() and linked.resolve() == shipped.resolve():
        return
    if linked.is_file() and not linked.is_symlink() and linked.read_bytes() != shipped.read_bytes():
        backup = linked.with_name(INSTANCE_CONFIG + ".bak")
        os.replace(linked, backup)
        print(f"{linked} differed from {shipped}, which configures this instance; kept it as {backup}",
              file=sys.stderr)
    tmp = linked.with_name(f".{INSTANCE_CONFIG}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(os.path.relpath(shipped, linked.parent))
    except OSError:
        shutil.copyfile(shipped, tmp)
    os.replace(tmp, linked)


def tool_environment(tool: str = "dg") -> dict[str, str]:
    """The environment `audience-dg` and `audience-dagster` run their tool in."""
    env = {**(DG_SKIP_SCHEMA_PASS if tool == "dg" else {}), **os.environ, DAGSTER_HOME_ENV: str(dagster_home())}
    if sys.prefix != sys.base_prefix:
        # dg warns unless the venv it runs in is the "activated" one.
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def _run_tool(tool: str) -> int:
    root = checkout_root()
    if not os.environ.get(DAGSTER_HOME_ENV) and root is None:
        print(f"audience-{tool}: {NO_INSTANCE}", file=sys.stderr)
        return 2
    env = tool_environment(tool)
    home = Path(env[DAGSTER_HOME_ENV])
    linked = home / INSTANCE_CONFIG
    config = f", configured by {linked.resolve()}" if linked.is_symlink() else ""
    print(f"Dagster instance: {home}{config}", file=sys.stderr)
    if tool == "dg" and root and not Path.cwd().resolve().is_relative_to(root):
        os.chdir(root)  # dg finds its project from the current directory
    exe = shutil.which(tool, path=sysconfig.get_path("scripts")) or shutil.which(tool)
    if exe is None:
        print(f"audience-{tool}: {tool} is not installed here: pip install -e . in the checkout", file=sys.stderr)
        return 2
    args = [tool, *sys.argv[1:]]
    if os.name == "nt":
        return subprocess.call(args, executable=exe, env=env)
    os.execve(exe, args, env)
    return 0  # not reached


def dg_main() -> int:
    """`audience-dg`: dg with this project's Dagster instance."""
    return _run_tool("dg")


def dagster_main() -> int:
    """`audience-dagster`: the dagster CLI with this project's Dagster instance."""
    return _run_tool("dagster")
