"""Errors ferrule raises. Each message names the bad value and what would be valid."""

from __future__ import annotations


class FerruleError(Exception):
    """Base of every error ferrule raises on purpose."""


class ConfigError(FerruleError, ValueError):
    """A configuration is invalid; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class FormatError(FerruleError, ValueError):
    """Tensors or files do not follow the GPTQ checkpoint format."""


class PluginError(FerruleError):
    """A plugin is broken or two plugins disagree (duplicate names, unknown hooks)."""


class NotRegisteredError(FerruleError, KeyError):
    """A name was asked for that no installed plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SelectionError(FerruleError):
    """No candidate can serve a request; ``reasons`` maps each candidate to its refusal."""

    def __init__(self, message: str, reasons: dict[str, str]):
        self.reasons = dict(reasons)
        super().__init__(message)
