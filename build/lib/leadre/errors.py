"""The platform's error family: what a caller needs to decide between "fix the input" and "try again".

Every error the platform raises on purpose is a `LeadreError`. A `UserError` (bad params, data, model or registry
state) fails the same way however often it is retried, so the CLI exits 1 with its one-line message and Airflow fails
the task at once; a `TransientError` (a store or server briefly unreachable) is worth another try. The domain errors
keep their homes (`leadre.config.ConfigError`, `leadre.data.tables.DataError`, ...) and their old bases (ValueError,
RuntimeError), so existing `except` clauses still catch them.

Light on purpose: the CLI and the DAG file import it at start-up.
"""

from __future__ import annotations


class LeadreError(Exception):
    """Raised by the platform on purpose; the message names the thing at fault and, where there is one, the fix."""

    exit_code = 1


class UserError(LeadreError):
    """Bad input, params, model or registry state: a retry fails the same way, the user has to change something."""


class TransientError(LeadreError):
    """A dependency was briefly unavailable: the same call may succeed later."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): "try again later" to shells, schedulers and pod restart policies


def one_line(message: str) -> str:
    """A possibly multi-line message (a DataError's findings, a YAML parser's pointer) as one line for a terminal.

    "headline:\\n  - a\\n  - b" becomes "headline: a; b"; the parser's caret lines (only `^`) are dropped.
    """
    parts = [line.strip().removeprefix("- ") for line in message.splitlines()]
    text = ""
    for part in parts:
        if not part.strip(" ^"):
            continue
        text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text
