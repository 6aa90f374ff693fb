"""One family of errors, so callers (and the CLI) can tell bad input from bugs.

Every error hwnas raises on purpose derives from :class:`HwnasError`; its message names
what was wrong, the value seen and what is allowed. The CLI prints the message and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class HwnasError(Exception):
    """Base class of every deliberate hwnas error. ``exit_code``: what the CLI exits with:
    2 for bad input or usage (nothing was done), 1 when the work itself failed."""

    exit_code = 2


class ArchError(HwnasError, ValueError):
    """An architecture (JSON, dict, encoding) does not fit the search space."""


class SpaceError(HwnasError, ValueError):
    """A search space's own parameters are inconsistent."""


class DeviceError(HwnasError):
    """A device file is malformed, or the device cannot be used on this machine."""


class BackendError(HwnasError):
    """A runtime failed to build, convert or run a model."""

    exit_code = 1


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
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a {what}") from None


def read_yaml(path, error: type[HwnasError] = HwnasError, what: str = "file"):
    """Parse a YAML file safely (``yaml.safe_load`` semantics: no Python objects), turning
    a missing file, a folder, a binary file, bad or too deeply nested YAML, and a key
    given twice (YAML would silently keep the last) into ``error`` naming the file."""
    from pathlib import Path

    import yaml

    class _Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:
                    dup = False
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice", key_node.start_mark)
                try:
                    seen.add(key)
                except TypeError:
                    pass
            return super().construct_mapping(node, deep)

    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_Strict)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not a text file (a {what} is YAML text)") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a {what}") from None


def check_settings(checks, error: type[HwnasError], what: str, obj) -> None:
    """Raise ``error`` for the first (name, ok, allowed) in ``checks`` that fails, naming
    the setting, its value and what is allowed."""
    for name, ok, allowed in checks:
        if not ok:
            raise error(f"{what} {name}={getattr(obj, name)!r} is not allowed; must be {allowed}")
