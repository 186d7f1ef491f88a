"""The ``cap-edge`` command: ``app`` (options, exit codes) with the model commands (``commands``)
and the deployment commands (``deploy``) registered on it."""

from . import commands, deploy  # noqa: F401  (register the commands)
from .app import app, format_eval_table

__all__ = ["app", "format_eval_table"]


def main() -> None:  # pragma: no cover
    app()
