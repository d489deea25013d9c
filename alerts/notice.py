"""One alert as Alertmanager's API v2 takes it (``POST /api/v2/alerts``): what the evaluator hands
to the Alertmanager client."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


def rfc3339(unix_s: float) -> str:
    return (
        datetime.datetime.fromtimestamp(unix_s, tz=datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class Notice:
    labels: tuple[tuple[str, str], ...]  # sorted (name, value); identifies the alert
    annotations: tuple[tuple[str, str], ...]
    starts_at_s: float  # unix seconds: when the alert became active (pending began)
    resolved_at_s: float | None  # unix seconds; None while firing
    generator_url: str = ""

    @property
    def fingerprint(self) -> tuple[tuple[str, str], ...]:
        return self.labels

    def payload(self, ends_at_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at_s),
            "endsAt": rfc3339(ends_at_s),
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out
