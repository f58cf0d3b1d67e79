"""`service inspect --pretty`: Docker's human-readable layout of a service (its formatter's
sections and labels), with the command in place of the image."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from typing import Any

from meshkit.base.durations import go_duration


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(ts))


def _policy(out: list[str], title: str, cfg: Mapping[str, Any], order: str) -> None:
    out.append(f"{title}:")
    out.append(f" Parallelism:\t{cfg['parallelism']}")
    if cfg.get("delay"):
        out.append(f" Delay:\t\t{go_duration(cfg['delay'])}")
    out.append(f" On failure:\t{cfg['failure_action']}")
    out.append(f" Monitoring Period: {go_duration(cfg['monitor'])}")
    out.append(f" Max failure ratio: {cfg['max_failure_ratio']:g}")
    out.append(f" {order} order:      {cfg['order']}")


def pretty_service(svc: Mapping[str, Any]) -> str:
    spec = svc["spec"]
    out = [f"\nID:\t\t{svc['id']}", f"Name:\t\t{spec['name']}"]
    labels = spec.get("labels") or {}
    if labels:
        out.append("Labels:")
        out += [f" {k}={v}" for k, v in sorted(labels.items())]
    out.append(f"Service Mode:\t{str(spec['mode']).capitalize()}")
    if spec["mode"] == "replicated":
        out.append(f" Replicas:\t{spec.get('replicas')}")
    status = svc.get("update_status") or {}
    if status:
        out.append("UpdateStatus:")
        out.append(f" State:\t\t{status.get('state', '')}")
        if status.get("started_at"):
            out.append(f" Started:\t{_when(status['started_at'])}")
        if status.get("completed_at"):
            out.append(f" Completed:\t{_when(status['completed_at'])}")
        out.append(f" Message:\t{status.get('message', '')}")
    if spec.get("constraints"):
        out.append("Placement:")
        out.append(f" Constraints:\t[{' '.join(spec['constraints'])}]")
    _policy(out, "UpdateConfig", spec["update"], "Update")
    _policy(out, "RollbackConfig", spec["rollback"], "Rollback")
    out.append("")
    out.append("ContainerSpec:")
    out.append(f" Command:\t{shlex.join(spec['command'])}")
    if spec.get("env"):
        out.append(f" Env:\t\t{' '.join(spec['env'])}")
    if spec.get("workdir"):
        out.append(f" Dir:\t\t{spec['workdir']}")
    if spec.get("user"):
        out.append(f" User: {spec['user']}")
    health = spec.get("health")
    if health:
        out.append(" Healthcheck:")
        out.append(f"  Interval = {go_duration(health['interval'])}")
        out.append(f"  Retries = {health['retries']}")
        out.append(f"  StartPeriod = {go_duration(health['start_period'])}")
        out.append(f"  Timeout = {go_duration(health['timeout'])}")
        out.append(f"  Tests:\n\t CMD-SHELL\n\t {health['cmd']}")
    for kind in ("secrets", "configs"):
        refs = spec.get(kind) or []
        if refs:
            out.append(f"{kind.capitalize()}:")
            for ref in refs:
                out.append(f" Target:\t{ref.get('target') or ref.get('source', '')}")
                out.append(f"  Source:\t{ref.get('source', '')}")
    restart = spec["restart"]
    out.append(f"Restart Policy:\n Condition:\t{restart['condition']}")
    out.append(f" Delay:\t\t{go_duration(restart['delay'])}")
    out.append(f" Max Attempts:\t{restart['max_attempts']}")
    out.append(f" Window:\t{go_duration(restart['window'])}")
    out.append(f"Stop Grace Period: {go_duration(spec['stop_grace_period'])}")
    if spec.get("networks"):
        out.append(f"Networks:\t{' '.join(spec['networks'])}")
    out.append(f"Endpoint Mode:\t{spec.get('endpoint_mode', 'vip')}")
    ports = spec.get("ports") or []
    if ports:
        out.append("Ports:")
        for p in ports:
            if p.get("published"):
                out.append(f" PublishedPort = {p['published']}")
            out.append(f"  Protocol = {p['protocol']}")
            out.append(f"  TargetPort = {p['target']}")
            out.append(f"  PublishMode = {p['mode']}")
    errors = [t for t in svc.get("tasks") or [] if t.get("Error")]
    if errors:  # meshkit's addition: why tasks failed, whole
        out.append("Task Errors:")
        out += [f" {t['Name']} ({t['ID'][:12]}): {t['Error']}" for t in errors]
    return "\n".join(out) + "\n"
