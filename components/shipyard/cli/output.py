"""What the commands print: the result document as JSON on stdout (--json), or a human
description of it; progress and shipyard's log lines on stderr. Both are the terminal's streams
(cli.console), whatever the libraries' output is redirected to. Plain formatting, no heavy
imports."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any

import click

from shipyard.cli import console


def progress(quiet: bool = False) -> Any:
    """Steps on the terminal's stderr (a spinner there, else one line per step); during a
    command run the inner steps' lines go to its log file only."""
    from shipyard.core.progress import LogProgress, NullProgress, RichProgress

    if quiet:
        return NullProgress()
    terminal = console.err()
    record = console.write_log if console.log_path() is not None else None
    if terminal.isatty():
        from rich.console import Console

        return RichProgress(Console(file=terminal), record=record)
    return LogProgress(lambda line: print(line, file=terminal, flush=True), record=record)


def note(text: str) -> None:
    """A line of shipyard's own progress that is not a step (a rollout's state changes): on
    the terminal's stderr unless --quiet, and in the run's log beside the libraries' lines."""
    if console.log_path() is not None:
        console.write_log(text)
    if not quiet():
        print(text, file=console.err(), flush=True)


def quiet() -> bool:
    return logging.getLogger().level > logging.INFO


def library_prints_to_stderr() -> Any:
    """MLflow and the KFP client print to stdout (e.g. "View run ... at ..."); stdout belongs
    to our result. (Under a command run both streams go to its log; this matters with
    --verbose and in-process runners.)"""
    return contextlib.redirect_stdout(sys.stderr)


def emit(document: Any, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True), file=console.out())
    else:
        click.echo(human, file=console.out())


def describe_export(doc: dict[str, Any]) -> str:
    parity = ", ".join(f"{k} (max abs error {v:.2g})" for k, v in doc["parity"].items())
    collections = ", ".join(f"{k} ({v} variables)" for k, v in doc["variable_collections"].items())
    return (f"Published {doc['name']} version {doc['version']} at {doc['path']}\n"
            f"  fingerprint: {doc['fingerprint']}\n"
            f"  endpoints: {parity}\n"
            f"  variable collections: {collections or 'none'}")


def describe_register(doc: dict[str, Any]) -> str:
    verb = "Reused" if doc["reused"] else "Registered and published"
    return (f"{verb} {doc['name']} version {doc['version']} at {doc['path']}\n"
            f"  run: {doc['run_id']}\n  fingerprint: {doc['fingerprint']}\n"
            f"  aliases: {doc['aliases']}")


def describe_alias_move(doc: dict[str, Any], name: str, alias: str) -> str:
    return f"{name}: {alias} {doc['from'] or '(unset)'} -> {doc['to']}"


def describe_alias_history(moves: list[dict[str, Any]]) -> str:
    lines = []
    for m in moves:
        target = m["to"] if m["to"] is not None else "(cleared)"
        lines.append(f"{m['time']}  {m['alias']:<10} {m['from'] or '-'} -> {target}  "
                     f"by {m['user']}"
                     + (f" (run {m['pipeline_run_id']})" if m.get("pipeline_run_id") else "")
                     + f": {m['reason']}")
    return "\n".join(lines)


def describe_push(doc: dict[str, Any], name: str, version: int, label: str,
                  serving_address: str | None) -> str:
    served = (f"\n  server: {doc['server']}" if serving_address else
              "\n  (no --serving-address: the server picks the file up on its next poll)")
    if not doc["complete"]:
        served += (f"\n  NOT COMPLETE: version {version} must load before {label} can move to "
                   "it; once the server reports it AVAILABLE (shipyard status "
                   "--serving-address ...), run this push again")
    return (f"{name}: label {label} -> version {version} "
            f"({doc['steps']} config step(s) written)\n"
            f"  versions loaded: {doc['after']['versions']}, "
            f"labels: {doc['after']['labels']}\n  config: {doc['config']}" + served)


def describe_status(doc: dict[str, Any]) -> str:
    lines = [f"{doc['name']} in {doc['repository']} (config {doc['config']})",
             f"{'version':>7}  {'size':>11}  {'loaded':<6}  {'labels':<13} {'aliases':<24} "
             f"{'server':<10} {'fingerprint':<12}  signed"]
    for row in doc["versions"]:
        size = (f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] is not None else
                "symlink" if row.get("symlink") else "not on disk")
        fingerprint = (row["fingerprint"] or "-").removeprefix("sha256:")[:12]
        signing = row.get("signing")
        signed = (f"{signing['method']} {(signing['key_fingerprint'] or '?')[:19]}" if signing
                  else "unsigned" if row["fingerprint"] else "-")
        lines.append(f"{row['version']:>7}  {size:>11}  {'yes' if row['in_config'] else 'no':<6}"
                     f"  {','.join(row['labels']) or '-':<13} {','.join(row['aliases']) or '-':<24}"
                     f" {row['server'] or '-':<10} {fingerprint:<12}  {signed}")
    if not doc["versions"]:
        lines.append("  (no versions)")
    lines += [f"warning: {w}" for w in doc.get("warnings", [])]
    lines += [f"error ({e['source']}): {e['message']}" for e in doc["errors"]]
    return "\n".join(lines)


def describe_gc(doc: dict[str, Any], name: str, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    kept = "; ".join(f"{v} ({', '.join(r)})" for v, r in doc["keep"].items()) or "none"
    skipped = "".join(f"\n  skipped {v}: {why}" for v, why in doc["skipped"].items())
    return f"{name}: {verb} versions {doc['remove'] or 'none'}\n  kept: {kept}" + skipped


def describe_validation(doc: dict[str, Any]) -> str:
    lines = [f"{doc['name']} version {doc['version']}, endpoint {doc['endpoint']}: "
             f"{doc['examples']} examples -> {'passed' if doc['passed'] else 'FAILED'}"]
    for comparison, label in (("parity", f"parity with {doc['source']}"),
                              ("agreement", f"agreement with version {doc['against']}")):
        for output, f in (doc.get(comparison) or {}).items():
            top1 = (f", top-1 {f['top1_agreement']:.2%}" if f["top1_agreement"] is not None
                    else "")
            lines.append(f"  {label}, {output}: max abs {f['max_abs_error']}, mean abs "
                         f"{f['mean_abs_error']}, within tolerance "
                         f"{f['within_tolerance']:.2%}{top1}")
    lines += [f"  gate failed: {f}" for f in doc["failures"]]
    return "\n".join(lines)


def describe_rollout(doc: dict[str, Any]) -> str:
    text = (f"{doc['name']}: version {doc['version']} over stable {doc['stable_version']}, "
            f"{doc['phase']}, step {doc['step'] + 1}, canary weight {doc['weight']}%"
            + (f", mirroring {doc['mirror']}% of stable's traffic" if doc.get("mirror") else ""))
    if doc.get("phase") == "awaiting_approval":
        text += (f"\n  waiting for `shipyard rollout approve --name {doc['name']} --reason ...` "
                 f"(or `rollout abort`)")
    for approval in doc.get("approvals") or ():
        text += (f"\n  step {approval['step']} approved by {approval['user']}: "
                 f"{approval['reason']}")
    if doc.get("reason"):
        text += f"\n  {doc['reason']}"
    if doc.get("figures"):
        text += f"\n  last gate figures: {doc['figures']}"
    if doc.get("requested"):
        text += f"\n  requested: {doc['requested']} ({doc.get('request_reason')})"
    if doc.get("pending"):
        text += "\n  still to do: " + ", ".join(a["kind"] for a in doc["pending"])
    return text


def describe_schedule(doc: dict[str, Any], name: str, host: str) -> str:
    return (f"recurring run {doc['recurring_run_id']} ({name}) on {host}: "
            f"cron {doc['cron']}, one run at a time, no catch-up")


def _describe_signatures(found: dict[str, Any]) -> str:
    """The demo's signature check in a line: which versions verified with the trust key."""
    parts, failed = [], []
    for environment in ("staging", "production"):
        versions = found.get(environment) or {}
        good = [v for v, problem in versions.items() if problem is None]
        failed += [f"{environment} {v}: {problem}" for v, problem in versions.items()
                   if problem is not None]
        if good:
            parts.append(f"{environment} {', '.join(sorted(good, key=int))}")
    line = (f"Signed and verified (model-signing, key {found['key_fingerprint'][:19]}...): "
            + ("; ".join(parts) or "no version"))
    return line + "".join(f"\n  not verified: {item}" for item in failed)


def describe_demo(doc: dict[str, Any]) -> str:
    pipeline, challenger, canary, where = (doc["pipeline"], doc["challenger"], doc["canary"],
                                           doc["where"])
    lines = [f"TFX pipeline: {doc['name']} version {pipeline['registered_model_version']} "
             f"(MLflow run {pipeline['mlflow_run_id']}; MLMD {pipeline['mlmd']})"]
    if doc["first_deployment"]:
        lines.append(f"First deployment: version {doc['first_deployment']['champion']} is "
                     "stable and champion")
    lines.append(f"Challenger: version {challenger['version']}"
                 f"{' (reused)' if challenger['reused'] else ''}")
    if canary["promoted"]:
        gates = canary["gates"]
        for output, figures in gates["agreement"].items():
            figure = (f"top-1 agreement {figures['top1_agreement']:.1%}"
                      if figures["top1_agreement"] is not None else
                      f"mean abs difference {figures['mean_abs_error']:.3g}")
            gated = output in (gates["agreement_outputs"] or [output])
            how = f"gate >= {gates['min_agreement']:.0%}" if gated else "reported"
            lines.append(f"  offline canary vs version {canary['previous_champion']}, "
                         f"{gates['examples']} examples: {output} {figure} ({how})")
        lines.append(f"  promoted: version {canary['version']} is stable and champion")
    else:
        lines.append(f"  offline canary skipped: {canary['reason']}")
    production = doc.get("production")
    if production:
        reused = " (already there)" if production["reused"] else ""
        lines.append(f"Production: version {production['version']}{reused}, a copy of staging's "
                     f"champion version {production['copied_from']['version']} "
                     f"({production['transfer']}; checksums and answers verified)")
    signatures = doc.get("signatures")
    if signatures:
        lines.append(_describe_signatures(signatures))
    lines += ["", "Where everything is:",
              f"  MLflow UI:     {where['mlflow_ui']}  (then open http://127.0.0.1:5000)",
              f"  status:        {where['status']}",
              *([f"  production:    {where['production_status']}"]
                if "production_status" in where else []),
              f"  alias history: {where['alias_history']}",
              f"  TFX MLMD:      {where['mlmd']}",
              f"  models.config: {where['models_config']}",
              "", "Model repository:", *(f"  {line}" for line in where["tree"]),
              "", describe_status(doc["status"])]
    return "\n".join(lines)
