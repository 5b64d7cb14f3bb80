"""Validation of names that become paths, Kubernetes objects and registry keys (pure)."""

from __future__ import annotations

import re

from shipyard.core.errors import UsageError

# A DNS-1123 label, as Kubernetes requires for object names: it also rules out path tricks
# ("../x", "a/b", ".hidden") because neither "." nor "/" is allowed.
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63


def validate_model_name(name: str, *, param: str = "name") -> str:
    """Returns `name` if it is a DNS-1123 label, else raises UsageError naming the fix and
    `param`, the parameter `name` came from."""
    if not name or len(name) > MAX_NAME_LENGTH or not _DNS_1123_LABEL.match(name):
        raise UsageError(
            f"{param}: {name!r} is not a valid model name. Expected a DNS-1123 label: "
            f"1-{MAX_NAME_LENGTH} characters of lower-case letters, digits and '-', starting "
            "and ending with a letter or digit (e.g. 'churn-model').", param=param)
    return name


MAX_VERSION = 2**63 - 1  # TF Serving's version numbers are int64 (ModelSpec, the config)


def validate_version(version: int, *, param: str = "version") -> int:
    """TF Serving versions are positive int64 integers (directory names)."""
    if version < 1 or version > MAX_VERSION:
        raise UsageError(f"{param}: {version} is not a valid version. Expected an integer from "
                         f"1 to {MAX_VERSION} (TF Serving's versions are int64).", param=param)
    return version


# What a rollout makes of NAME: Services NAME and NAME-canary, whose names must be DNS-1035
# labels (a letter first, at most 63 characters: the API server refuses others), and the
# ConfigMaps NAME-canary-config-vN and Lease shipyard-rollout-NAME, which fit when those do.
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ROLLOUT_SUFFIX = "-canary"
MAX_ROLLOUT_NAME_LENGTH = MAX_NAME_LENGTH - len(ROLLOUT_SUFFIX)


def validate_rollout_name(name: str, *, param: str = "name") -> str:
    """A model name that can make the rollout's Kubernetes objects, else UsageError naming the
    limit: a Service name is a DNS-1035 label, and the canary's adds '-canary'."""
    validate_model_name(name, param=param)
    if not _DNS_1035_LABEL.match(name) or len(name) > MAX_ROLLOUT_NAME_LENGTH:
        raise UsageError(
            f"{param}: {name!r} cannot be rolled out on Kubernetes: its Services are named "
            f"{name!r} and '{name}{ROLLOUT_SUFFIX}', and a Service name must be a DNS-1035 "
            f"label (start with a letter, at most 63 characters), so a model name must start "
            f"with a letter and have at most {MAX_ROLLOUT_NAME_LENGTH} characters. Register "
            "the model under such a name to roll it out.", param=param)
    return name
