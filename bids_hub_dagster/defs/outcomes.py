"""What a failed run says to a user: its step errors and the problems of its failed checks."""

from collections.abc import Iterable

import dagster as dg

from ..errors import UserError

USER_ERROR = "user_error"  # metadata key of a step failure caused by the user's input
FAILED_SHARDS = "failed_shards"  # metadata key of a shard run's failure: {partition: message}
SHOWN_PROBLEMS = 50  # problems listed in a check's metadata (the count says the rest)


def problems_markdown(problems: list[str]) -> str:
    """Problems as a markdown list, the first :data:`SHOWN_PROBLEMS` of them."""
    more = f"\n- … {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return "\n".join(f"- {p}" for p in problems[:SHOWN_PROBLEMS]) + more


def check_metadata(problems: list[str], **metadata: object) -> dict[str, object]:
    """A check result's metadata: ``metadata`` and its problems (``none``), as the CLI and the UI show them."""
    return {**metadata, "problems": dg.MetadataValue.md(problems_markdown(problems) or "none")}


def user_failure(exc: UserError, metadata: dict[str, object] | None = None) -> dg.Failure:
    """The step failure of an error in the user's input (a :class:`UserError`: a BIDS file, the
    spec, the destination). Assets turn only these into failures; any other exception is a bug
    or a passing fault, left to propagate with its traceback (the retry policy may retry it).

    Its message names the file and what to do; a retry would fail the same way, so none is
    made; the CLI exits 2 for it, as for the same error found before any run.
    """
    return dg.Failure(
        str(exc), allow_retries=False, metadata={USER_ERROR: type(exc).__name__} | dict(metadata or {})
    )


def is_user_error(events: Iterable[dg.DagsterEvent]) -> bool:
    """Whether a failed run failed only of errors in the user's input (see :func:`user_failure`)."""
    failures = [e.step_failure_data for e in events if e.is_step_failure]
    return bool(failures) and all(
        f.user_failure_data is not None and USER_ERROR in f.user_failure_data.metadata for f in failures
    )


def failed_check_problems(events: Iterable[dg.DagsterEvent]) -> list[str]:
    """``check: problem`` lines of every failed asset check among ``events``."""
    lines = []
    for event in events:
        if event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            continue
        evaluation = event.event_specific_data
        if evaluation.passed:
            continue
        problems = evaluation.metadata.get("problems")
        text = problems.value if problems is not None else "failed"
        for line in str(text).splitlines():
            lines.append(f"{evaluation.check_name}: {line.removeprefix('- ')}")
    return lines


def failure_message(events: Iterable[dg.DagsterEvent]) -> str:
    """The user's errors of a failed run: the innermost cause of each failed step, then failed checks."""
    events = list(events)
    messages = []
    for event in events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            if error is None or error.cls_name == "DagsterAssetCheckFailedError":
                continue  # said better by the checks' own problems, below
            message = error.message.strip()
            head, sep, rest = message.partition(": ")
            if sep and error.cls_name and head.rsplit(".", 1)[-1] == error.cls_name:
                message = rest  # "pkg.mod.ShardFilesError: shard-00001: …" → "shard-00001: …"
            messages.append(message)
    messages += failed_check_problems(events)
    return "\n".join(messages) or "the run failed (see the Dagster UI for its logs)"
