"""A longer fuzz run: the property tests of tests/property/, each with many more examples.

    python -m tests.fuzz.run [--examples N] [--seconds S] [--only TEXT] [--include-known] [--smoke]

Every property test (a hypothesis test in tests/property/test_*.py) is a target. Each is run in
rounds of fresh random examples until it has run N examples or S seconds have passed, whichever
comes first; every example is bounded in time (an example that runs on is interrupted and counts as a
failure, so a hang is found, not waited for). A failure stops its target and is printed with the
shrunk input hypothesis found. Properties skipped in pytest for a known bug are left out unless
--include-known is given. The closing table gives, per target, the examples run, the time taken and
the failures found; the exit status is 1 if anything failed.

--smoke runs a handful of examples per target (tests/fuzz/test_smoke.py runs it under pytest).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, is_hypothesis_test, settings

import tests.property  # registers and loads the "property" profile, which the "fuzz" one replaces
from tests.property.bounds import finishes_within
from tests.property.servers import running_smtp, smtp_protocol
from tests.support.dnsserver import DNSTestServer

# One round's size: hypothesis shrinks a failure within a round, and a round's examples are all new.
ROUND = 500
# Longer than any property's own bound, so those fail first with their own message.
EXAMPLE_SECONDS = 30.0
SMOKE_EXAMPLES = 10
SMOKE_SECONDS = 3.0


@dataclass
class Target:
    name: str  # module::test
    test: Callable[..., None]
    known_bug: str  # the skip reason, for properties skipped in pytest until a bug is fixed
    examples: int = 0
    seconds: float = 0.0
    failure: str = ""


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    examples = SMOKE_EXAMPLES if args.smoke else args.examples
    seconds = SMOKE_SECONDS if args.smoke else args.seconds
    settings.register_profile(
        "fuzz",
        max_examples=min(examples, ROUND),
        deadline=None,  # each example is bounded by EXAMPLE_SECONDS instead
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    settings.load_profile("fuzz")
    targets = [t for t in _targets() if args.only in t.name]
    with ExitStack() as stack:
        fixtures = _Fixtures(stack)
        for target in targets:
            if target.known_bug and not args.include_known:
                continue
            _fuzz(target, fixtures, examples, seconds)
            print(_row(target), flush=True)
    _report(targets, args.include_known)
    return 1 if any(t.failure for t in targets) else 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per target at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per target at most")
    parser.add_argument("--only", default="", help="only targets whose name contains this text")
    parser.add_argument(
        "--include-known", action="store_true", help="also fuzz properties skipped for a known bug"
    )
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_EXAMPLES} examples per target")
    return parser.parse_args(argv)


def _targets() -> list[Target]:
    """Every hypothesis test of tests/property/, imported now that the fuzz profile is loaded (tests
    that scale their example count from the profile read it at import)."""
    targets = []
    for module_info in pkgutil.iter_modules(tests.property.__path__):
        if not module_info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.property.{module_info.name}")
        for name, test in inspect.getmembers(module, is_hypothesis_test):
            if name.startswith("test_"):
                targets.append(Target(f"{module_info.name}::{name}", test, _skip_reason(test)))
    return targets


def _skip_reason(test: Callable[..., None]) -> str:
    marks = getattr(test, "pytestmark", [])
    return next((str(m.kwargs.get("reason", "skipped")) for m in marks if m.name == "skip"), "")


class _Fixtures:
    """The pytest fixtures the properties ask for, each started once for the whole run."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._values: dict[str, Any] = {}
        self._factories: dict[str, Callable[[], AbstractContextManager[Any]]] = {
            "dns_server": self._dns_server,
            "smtp_server": self._smtp_server,
            "protocol": smtp_protocol,
        }

    def for_test(self, test: Callable[..., None]) -> dict[str, Any]:
        names = inspect.signature(test).parameters  # what is left for pytest to pass: fixtures
        return {name: self.get(name) for name in names}

    def get(self, name: str) -> Any:
        if name not in self._values:
            self._values[name] = self._stack.enter_context(self._factories[name]())
        return self._values[name]

    @contextmanager
    def _dns_server(self) -> Iterator[DNSTestServer]:
        server = DNSTestServer().start()
        try:
            yield server
        finally:
            server.stop()

    @contextmanager
    def _smtp_server(self) -> Iterator[Any]:
        with (
            tempfile.TemporaryDirectory() as directory,
            running_smtp(Path(directory), self.get("dns_server")) as server,
        ):
            yield server


def _fuzz(target: Target, fixtures: _Fixtures, examples: int, seconds: float) -> None:
    """Rounds of the target until `examples` or `seconds` is reached or it fails."""
    test = target.test
    inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> None:
        target.examples += 1
        with finishes_within(EXAMPLE_SECONDS):
            inner(*args, **kwargs)

    test.hypothesis.inner_test = counted  # type: ignore[attr-defined]
    kwargs = fixtures.for_test(test)
    start = time.monotonic()
    try:
        while target.examples < examples and time.monotonic() - start < seconds:
            before = target.examples
            try:
                test(**kwargs)
            except Exception as e:  # the property failed: keep hypothesis's account of it
                target.failure = _describe(e)
                break
            if target.examples == before:
                break  # nothing left to generate
    finally:
        test.hypothesis.inner_test = inner  # type: ignore[attr-defined]
        target.seconds = time.monotonic() - start


def _describe(error: BaseException) -> str:
    notes = getattr(error, "__notes__", [])  # hypothesis's "Failing test case: ..." with the input
    return "\n".join([f"{type(error).__name__}: {str(error)[:500]}", *notes])


def _row(target: Target) -> str:
    rate = target.examples / target.seconds if target.seconds else 0.0
    status = "FAILED" if target.failure else "ok"
    return f"{target.name:<78} {target.examples:>8} {target.seconds:>8.1f} s {rate:>8.0f}/s  {status}"


def _report(targets: list[Target], include_known: bool) -> None:
    run = [t for t in targets if include_known or not t.known_bug]
    print(f"\n{'target':<78} {'examples':>8} {'time':>10} {'rate':>10}  result")
    for target in run:
        print(_row(target))
    total_examples = sum(t.examples for t in run)
    total_seconds = sum(t.seconds for t in run)
    failed = [t for t in run if t.failure]
    print(f"{len(run)} targets, {total_examples} examples in {total_seconds:.0f} s, {len(failed)} failed")
    for target in targets:
        if target.known_bug and not include_known:
            print(f"left out (known bug): {target.name}")
    for target in failed:
        print(f"\nFAILED {target.name}{' (known bug)' if target.known_bug else ''}\n{target.failure}")


if __name__ == "__main__":
    sys.exit(main())
