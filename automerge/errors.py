"""User-facing errors. Every message names the problem (file, tensor, parameter, YAML path) and the fix.

The CLI prints these without a traceback and exits with status 2.
"""


class AutomergeError(Exception):
    """Base class of every error a user is meant to read and act on."""


class CheckpointError(AutomergeError):
    """A model directory cannot be read: missing, incomplete, corrupt, or holding NaN/Inf."""


class IncompatibleModelsError(AutomergeError):
    """Base and specialists cannot be merged: architecture, tensor names, shapes, vocab or tokenizer differ."""


class RecipeError(AutomergeError):
    """A merge recipe is invalid: unknown method, parameter out of range, missing model, ..."""


class SpaceError(AutomergeError):
    """A search-space file is invalid."""


class EvalError(AutomergeError):
    """An evaluation task cannot be set up or run."""


def redact(url: str) -> str:
    """A storage URL without its password (``postgresql://me:***@host/db``), for every message and
    page that shows one (re-exported by `automerge.study_format`)."""
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def storage_failure(url: str, err: BaseException) -> str:
    """One line for a study storage that cannot be opened: the URL (password hidden), the database
    driver's own first line (not SQLAlchemy's SQL echo and links), and the fix for the usual causes."""
    shown = redact(url)
    msgs = []
    e: BaseException | None = err
    while e is not None and len(msgs) < 10:     # the root cause: a driver error under optuna / SQLAlchemy
        orig = getattr(e, "orig", None)
        msgs.append(str(orig if orig is not None else e))
        e = e.__cause__ or e.__context__
    drivers = [m for m in msgs if m.strip()] or [type(err).__name__]
    text = next((m for m in reversed(drivers) if "database" in m.lower() or "connect" in m.lower()), drivers[0])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("[SQL", "(Background"))]
    msg = " ".join(lines[:2])[:300] if lines else type(err).__name__
    low = msg.lower()
    if "not a database" in low or "malformed" in low or "file is encrypted" in low:
        fix = ("the file is not a readable SQLite database (corrupt or truncated): restore it from a copy, or move "
               "the study directory away and start the study again")
    elif "database" in low and "does not exist" in low:
        fix = "create that database first (createdb NAME) or fix its name in --storage"
    elif "password" in low or "authentication" in low or "role" in low:
        fix = "check the user and password in --storage"
    elif "refused" in low or "could not connect" in low or "connection failed" in low or "timeout" in low \
            or "name or service" in low or "could not translate" in low:
        fix = "is the database server running and reachable at that host and port? check --storage"
    elif "plugin" in low or "could not parse" in low or "argument" in low:
        fix = "write --storage as sqlite:///PATH/study.db or postgresql://USER@HOST[:PORT]/DATABASE"
    elif "unable to open" in low or "permission" in low or "read-only" in low:
        fix = "the database file or its directory is not writable here: check the path and its permissions"
    else:
        fix = "check --storage"
    return f"cannot open study storage {shown}: {msg}; {fix}"
