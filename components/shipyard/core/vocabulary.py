"""The words shipyard's parts share, spelled once: TF Serving version labels, MLflow registry
aliases, the tags shipyard writes, and the files it names in a repository.

Each is part of a public interface: users' TF Serving clients ask for the labels, deploy jobs
read the aliases, dashboards and audits read the tags. Changing a value is a breaking change.
"""

from __future__ import annotations

# TF Serving version labels in models.config (model_version_policy + version_labels).
STABLE = "stable"
CANARY = "canary"
LABELS = (STABLE, CANARY)

# MLflow registered-model aliases. `candidate`: the newest registered version; `canary`: the
# version a rollout is trying; `champion`: the version serving as stable.
CANDIDATE = "candidate"
CANARY_ALIAS = CANARY
CHAMPION = "champion"

# Tags on MLflow model versions and runs.
PUBLISHED_TAG = "shipyard.published"
SERVING_VERSION_TAG = "shipyard.serving_version"
FINGERPRINT_TAG = "shipyard.fingerprint"
ENDPOINTS_TAG = "shipyard.endpoints"
COLLECTIONS_TAG = "shipyard.variable_collections"
PIPELINE_RUN_TAG = "shipyard.pipeline_run_id"
SUPERSEDED_TAG = "shipyard.superseded_by"
COPIED_FROM_TAG = "shipyard.copied_from"  # a copied version's lineage (steps.copy)
COPY_PROOF_TAG = "shipyard.copy_proof"  # what proved a copy in its destination (steps.copy)
# On versions only: the registration that created it (core.claims.Owner), so that another
# registration of the same content can tell whether to wait for it (steps.versions).
OWNER_TAG = "shipyard.owner"
# Registered-model tags, one per alias move: the audit trail (core.audit).
ALIAS_LOG_TAG_PREFIX = "shipyard.alias_log."

# Files in a repository: <repo>/models.config beside <repo>/<name>/<version>/.
CONFIG_NAME = "models.config"
