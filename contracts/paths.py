"""Where the project's configuration and state live, without relying on an editable install.

- ``configs_dir()``: ``$LORA_REGRET_CONFIGS_DIR``, else ``configs/`` of the checkout this
  package runs from, else the copy a normal install puts in ``<prefix>/share/lora-regret``.
- ``project_root()``: ``$LORA_REGRET_HOME``, else the checkout, else the working folder;
  relative folders of the local profile (``.state/jobs``) and the default MLflow store
  resolve against it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIGS_ENV = "LORA_REGRET_CONFIGS_DIR"
HOME_ENV = "LORA_REGRET_HOME"
_CHECKOUT = Path(__file__).resolve().parent.parent


def _is_checkout(folder: Path) -> bool:
    return (folder / "configs" / "models.yaml").is_file() and (folder / "contracts").is_dir()


def project_root() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    if _is_checkout(_CHECKOUT):
        return _CHECKOUT
    return Path.cwd()


def configs_dir() -> Path:
    if os.environ.get(CONFIGS_ENV):
        return Path(os.environ[CONFIGS_ENV]).expanduser()
    if _is_checkout(project_root()):
        return project_root() / "configs"
    if _is_checkout(_CHECKOUT):
        return _CHECKOUT / "configs"
    installed = Path(sys.prefix) / "share" / "lora-regret" / "configs"
    if installed.is_dir():
        return installed
    raise FileNotFoundError(
        f"configs: no configs/ folder found; set {CONFIGS_ENV} to the project's configs folder")


def state_dir() -> Path:
    """Local state of the embedded default (MLflow store, jobs, runs)."""
    return project_root() / ".state"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"
