"""One family of errors, so callers (and the CLI) can tell bad input from bugs.

Every error hwnas raises on purpose derives from :class:`HwnasError`; its message names
what was wrong, the value seen and what is allowed. The CLI prints the message and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class HwnasError(Exception):
    """Base class of every deliberate hwnas error."""


class ArchError(HwnasError, ValueError):
    """An architecture (JSON, dict, encoding) does not fit the search space."""


class SpaceError(HwnasError, ValueError):
    """A search space's own parameters are inconsistent."""


class DeviceError(HwnasError):
    """A device file is malformed, or the device cannot be used on this machine."""


class BackendError(HwnasError):
    """A runtime failed to build, convert or run a model."""


class LutError(HwnasError):
    """A lookup table is malformed, incomplete or from another device."""


def read_json(path, error: type[HwnasError] = HwnasError, what: str = "file"):
    """Parse a JSON file, turning a missing file or bad JSON into ``error`` naming it."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None


def check_settings(checks, error: type[HwnasError], what: str, obj) -> None:
    """Raise ``error`` for the first (name, ok, allowed) in ``checks`` that fails, naming
    the setting, its value and what is allowed."""
    for name, ok, allowed in checks:
        if not ok:
            raise error(f"{what} {name}={getattr(obj, name)!r} is not allowed; must be {allowed}")
