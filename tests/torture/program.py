"""Programs: what one torture run does, as a JSON tree of operations, and the seeded generator.

A program is ``{"pid": "p17", "app": "local"|"http", "ops": [op, ...]}``. Each op is a dict with an
``"op"`` field:

- ``run``: ``step.run`` with a ``sync`` or ``async`` handler that works ``ms`` milliseconds and
  raises on its first ``fail`` attempts (``err``: ``plain`` (a ``TortureError``), ``after`` (a
  ``RetryAfterError``) or ``nonret`` (a ``NonRetriableError``)), with ``retries`` retries of its own;
  with ``big``, it returns that many bytes, over ``MAX_OUTPUT_BYTES``; with ``kill``, the driver
  SIGKILLs the worker running it the first time it runs (a fault placed exactly, e.g. in the step a
  wake-up job runs, or in one of a fan-out's steps).
- ``sleep``: ``step.sleep`` for ``ms``.
- ``wait``: ``step.wait_for_event`` on ``torture/signal`` whose ``data.tok`` is ``tok``, for up to
  ``ms``. ``outcome`` says what the driver does: ``match`` (sends the event once the wait is
  registered), ``timeout`` (sends nothing), ``race`` (sends it at the instant the wait times out),
  ``early`` (the program's previous op, a ``send``, sent it before the wait registered).
- ``send``: ``step.send_event`` of ``torture/signal`` with ``tok`` and ``v``.
- ``invoke``: ``step.invoke`` of the app's child function with the program ``child`` (a list of ops).
- ``par``: ``group.parallel`` over ``branches``, each a list of ops run in sequence.
- ``try``: runs ``body`` (a list of ops) and catches a ``StepError``.
- ``loop``: ``n`` ``step.run`` calls with one constant step id (keys ``id``, ``id:1``, ...); now and
  then long enough to take the run past ``MAX_STEPS``.
- ``cancel``: the driver cancels the run (``via`` the API or a cancellation event) while it is
  ``at`` a ``wait``, a ``sleep`` or inside a slow ``step``; ops after it must never run.
- ``raise``: only last: code outside steps raises ``TortureError`` on the function's first ``n``
  attempts (``kind`` ``retry``), or a ``NonRetriableError`` (``kind`` ``nonret``).

Step ids derive from an op's place in the tree (``path``), so every re-entry asks for the same ids.
Step results derive from the program id, the step id and the value computed so far (``acc``), so the
model can compute them without running anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

Op = dict[str, Any]
Program = dict[str, Any]

#: The functions' own retries (for errors outside steps), and a step's retries when it sets none.
FUNCTION_RETRIES = 2
#: Every step's backoff: short, so that retries fit in the test.
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 0.4
#: A RetryAfterError's delay (served functions clamp Retry-After to at least 1 s).
RETRY_AFTER_S = 1.0
#: A wait that must match gets this long: the driver sends its event within a second or two.
MATCH_TIMEOUT_MS = 45_000
#: How long a ``cancel`` op holds the run (a wait or a sleep) before going on without a cancel.
CANCEL_HOLD_MS = 60_000
#: How long the step of a ``cancel`` op at ``step`` works.
CANCEL_STEP_MS = 1_500
#: The cluster's limits (STEPQ_MAX_STEPS, STEPQ_MAX_OUTPUT_BYTES): some programs go past them.
MAX_STEPS = 80
MAX_OUTPUT_BYTES = 8192
#: Event names shared by both apps.
SIGNAL = "torture/signal"
NEVER = "torture/never"

MOD = 2**31 - 1


def step_id(letter: str, path: str) -> str:
    """The step id of the op at ``path``: ``r3``, ``s1b2.0``..."""
    return f"{letter}{path}"


def branch_path(path: str, branch: int) -> str:
    """The path prefix of a parallel branch's ops."""
    return f"{path}b{branch}."


def body_path(path: str) -> str:
    """The path prefix of a try's body ops."""
    return f"{path}t."


def value(pid: str, name: str, acc: int) -> int:
    """A step's result: a hash of the program, the step (its key name) and the value so far."""
    digest = hashlib.blake2b(f"{pid}|{name}|{acc}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % MOD


def mix(acc: int, v: int) -> int:
    """Fold a step's contribution into the value so far (order matters)."""
    return (acc * 31 + v + 7) % MOD


def seed_of(pid: str) -> int:
    """The value a program starts from."""
    return value(pid, "", 0)


def name_code(text: str) -> int:
    """A number for a caught error's name."""
    return value("", text, 0)


def signal_value(tok: str) -> int:
    """The ``v`` of the signal event for a wait's ``tok``."""
    return value(tok, "signal", 0)


WAIT_TIMEOUT_CODE = 5
SEND_CODE = 11
SLEEP_CODE = 3


def token_digest(tokens: list[str]) -> str:
    """A short digest of the tokens a run's steps returned, in program order."""
    return hashlib.blake2b("|".join(tokens).encode(), digest_size=6).hexdigest()


def walk(ops: list[Op], path: str = "") -> list[tuple[str, Op]]:
    """Every op in the tree with its path, depth first, in program order (children excluded)."""
    out: list[tuple[str, Op]] = []
    for i, op in enumerate(ops):
        here = f"{path}{i}"
        out.append((here, op))
        if op["op"] == "par":
            for b, branch in enumerate(op["branches"]):
                out += walk(branch, branch_path(here, b))
        elif op["op"] == "try":
            out += walk(op["body"], body_path(here))
    return out


def describe(ops: list[Op]) -> str:
    """A compact one-line shape of a program, for failure messages: ``run(f1/after) sleep sleep par[3]``."""
    parts = []
    for op in ops:
        kind = op["op"]
        if kind == "run":
            tail = f"({op['mode'][0]}{',f' + str(op['fail']) + '/' + op['err'] if op['fail'] else ''})"
            parts.append("run" + tail)
        elif kind == "par":
            inner = " | ".join(describe(b) for b in op["branches"][:4])
            more = f" |+{len(op['branches']) - 4}" if len(op["branches"]) > 4 else ""
            parts.append(f"par{len(op['branches'])}[{inner}{more}]")
        elif kind == "try":
            parts.append(f"try[{describe(op['body'])}]")
        elif kind == "invoke":
            parts.append(f"invoke[{describe(op['child'])}]")
        elif kind == "wait":
            parts.append(f"wait({op['outcome']})")
        elif kind == "cancel":
            parts.append(f"cancel({op['at']},{op['via']})")
        elif kind == "loop":
            parts.append(f"loop{op['n']}")
        elif kind == "raise":
            parts.append(f"raise({op['kind']}{op.get('n', '')})")
        else:
            parts.append(kind)
    return " ".join(parts)


def _run_op(**kw: Any) -> Op:
    return {"op": "run", "mode": "async", "ms": 0, "fail": 0, "err": "plain", "retries": 2, **kw}


#: Shapes that once left runs stuck (issue 8), sent in every torture run, in-process and over HTTP,
#: besides the generated programs: a failure here names its shape at once.
KNOWN_SHAPES: tuple[list[Op], ...] = (
    # parallel steps of one run loaded at once in one worker: a result refused as fenced
    [{"op": "par", "branches": [[_run_op(ms=20 * (i % 5), fail=i % 2)] for i in range(24)]}],
    [
        {
            "op": "par",
            "branches": [[_run_op(), {"op": "par", "branches": [[_run_op()], [_run_op(fail=1)]]}], [_run_op()]],
        }
    ],
    # a retry scheduled by a sleep's wake-up job: a failing step, then a failing function body
    [{"op": "sleep", "ms": 100}, _run_op(fail=1)],
    [{"op": "sleep", "ms": 100}, {"op": "raise", "kind": "retry", "n": 1}],
    # a sleep right after a sleep
    [{"op": "sleep", "ms": 100}, {"op": "sleep", "ms": 100}, _run_op()],
    # a wake-up job whose worker dies in the step after the sleep (the kills land in the long step)
    [{"op": "sleep", "ms": 300}, _run_op(ms=1000, kill=True)],
    [{"op": "sleep", "ms": 300}, _run_op(ms=1000, mode="sync", kill=True)],
)

#: Op kinds a generator can leave out (``Mix.without``): every op kind, and ``fail`` for failing steps.
KINDS = (
    "run",
    "sleep",
    "wait",
    "par",
    "try",
    "invoke",
    "send",
    "loop",
    "cancel",
    "raise",
    "fail",
    "http",
    "limits",
    "kill",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Mix:
    """How often the generator picks each thing (the defaults keep programs small on average)."""

    min_ops: int = 1
    max_ops: int = 6
    #: The share of programs served over HTTP.
    http_share: float = 0.3
    cancel_share: float = 0.08
    raise_share: float = 0.05
    wide_share: float = 0.04
    #: Programs with a loop that may take them past MAX_STEPS.
    long_share: float = 0.02
    #: Kinds never generated (see ``KINDS``), to tell which kind a failure needs.
    without: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.without) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown op kinds {sorted(unknown)}; known: {', '.join(KINDS)}")


#: Relative weights of the ops of a sequence, of a parallel branch, and of a try's body.
SEQUENCE = {"run": 40, "sleep": 12, "wait": 12, "par": 12, "try": 8, "invoke": 5, "send": 5, "loop": 6}
BRANCH = {"run": 55, "sleep": 13, "wait": 10, "try": 12, "invoke": 5, "par": 5}
BODY = {"run": 75, "sleep": 15, "invoke": 10}


class Generator:
    """Builds programs from one seeded random stream: the same seed gives the same programs."""

    def __init__(self, seed: int, mix: Mix | None = None) -> None:
        self.rng = random.Random(seed)
        self.mix = mix or Mix()
        self._tokens = 0
        self._pid = ""

    def programs(self, n: int) -> list[Program]:
        return [self.program(f"p{i}") for i in range(n)]

    def _allowed(self, kind: str) -> bool:
        return kind not in self.mix.without

    def _pick(self, weights: dict[str, int], *, not_: tuple[str, ...] = ()) -> str:
        kinds = [k for k in weights if self._allowed(k) and k not in not_]
        if not kinds:
            return "run"
        return self.rng.choices(kinds, weights=[weights[k] for k in kinds])[0]

    def program(self, pid: str) -> Program:
        rng, mix = self.rng, self.mix
        self._pid = pid
        ops = self._sequence(rng.randint(mix.min_ops, mix.max_ops), depth=0)
        if rng.random() < mix.long_share and self._allowed("limits"):
            long_loop = {"op": "loop", "n": rng.randint(MAX_STEPS - 10, MAX_STEPS + 20), "mode": "async"}
            ops.insert(rng.randint(0, len(ops)), long_loop)
        if rng.random() < mix.cancel_share and self._allowed("cancel"):
            at = rng.randint(0, len(ops))
            holds = [h for h in ("wait", "sleep", "step") if self._allowed("run" if h == "step" else h)] or ["wait"]
            cancel = {"op": "cancel", "at": rng.choice(holds), "via": rng.choice(["api", "event"])}
            ops.insert(at, cancel)
            if at == len(ops) - 1:  # something after it, which must never run
                ops.append(self._run())
        elif rng.random() < mix.raise_share and self._allowed("raise"):
            if rng.random() < 0.3:
                ops.append({"op": "raise", "kind": "nonret"})
            else:
                ops.append({"op": "raise", "kind": "retry", "n": rng.randint(1, 3)})
        app = "http" if rng.random() < mix.http_share and self._allowed("http") else "local"
        return {"pid": pid, "app": app, "ops": ops}

    def _tok(self) -> str:
        self._tokens += 1
        return f"{self._pid}-t{self._tokens}"

    def _sequence(self, n: int, depth: int, child: bool = False) -> list[Op]:
        ops: list[Op] = []
        while len(ops) < n:
            ops += self._op(depth, child)
        return ops

    def _op(self, depth: int, child: bool) -> list[Op]:
        """One op (two for back-to-back sleeps and for an early event's send and wait)."""
        rng = self.rng
        excluded = (("wait", "invoke") if child else ()) + (("par", "invoke") if depth >= 2 else ())
        kind = self._pick(SEQUENCE, not_=excluded)
        if kind == "sleep":
            sleeps = [{"op": "sleep", "ms": rng.choice([100, 200, 400, 800, 1500])}]
            if rng.random() < 0.35:  # back to back
                sleeps.append({"op": "sleep", "ms": rng.choice([100, 300, 700])})
            return sleeps
        if kind == "wait":
            return self._wait()
        if kind == "par":
            return [self._par(depth, child)]
        if kind == "try":
            return [self._try(depth, child)]
        if kind == "invoke":
            return [{"op": "invoke", "child": self._sequence(rng.randint(1, 3), depth + 1, child=True)}]
        if kind == "send":
            return [{"op": "send", "tok": self._tok(), "v": rng.randint(1, 1000)}]
        if kind == "loop":
            return [{"op": "loop", "n": rng.randint(2, 4), "mode": rng.choice(["sync", "async"])}]
        return [self._run()]

    def _run(self, *, failing: bool = False) -> Op:
        rng = self.rng
        op: Op = {
            "op": "run",
            "mode": rng.choice(["sync", "async"]),
            "ms": rng.choice([0, 0, 5, 20, 50, 200]),
            "fail": 0,
            "err": "plain",
            "retries": 2,
        }
        if rng.random() < 0.04:
            op["ms"] = rng.choice([600, 1200])  # long enough that kills land inside it
        if rng.random() < 0.015 and self._allowed("kill"):
            op["ms"], op["kill"] = max(op["ms"], 600), True  # long enough for the driver to see it run
        roll = rng.random()
        if not self._allowed("fail"):
            return op
        if rng.random() < 0.01 and self._allowed("limits"):
            op["big"] = 2 * MAX_OUTPUT_BYTES  # fails for good at once: OutputTooLarge
            return op
        if failing or roll < 0.04:  # fails for good: a StepError at this step
            op["retries"] = rng.randint(0, 2)
            op["fail"] = op["retries"] + 1
            op["err"] = rng.choice(["plain", "plain", "after"])
        elif roll < 0.22:  # fails, then succeeds on a retry
            op["fail"] = rng.randint(1, 2)
            op["retries"] = rng.randint(op["fail"], 3)
            op["err"] = rng.choice(["plain", "plain", "after"])
        elif roll < 0.235:
            op["fail"] = 1
            op["err"] = "nonret"
        return op

    def _wait(self) -> list[Op]:
        rng = self.rng
        outcome = rng.choice(["match", "match", "timeout", "race", "early"])
        tok = self._tok()
        ms = MATCH_TIMEOUT_MS if outcome == "match" else rng.choice([500, 1000, 1500])
        wait = {"op": "wait", "outcome": outcome, "tok": tok, "ms": ms}
        if outcome == "early" and self._allowed("send"):
            return [{"op": "send", "tok": tok, "v": signal_value(tok)}, wait]
        if outcome == "early":
            wait["outcome"] = "timeout"
        return [wait]

    def _par(self, depth: int, child: bool) -> Op:
        rng = self.rng
        if not child and depth == 0 and rng.random() < self.mix.wide_share:
            width = rng.randint(20, 50)
            branches = [[self._run()] for _ in range(width)]
        else:
            width = rng.randint(2, 3)
            branches = [self._branch(depth, child) for _ in range(width)]
        return {"op": "par", "branches": branches}

    def _branch(self, depth: int, child: bool) -> list[Op]:
        """A parallel branch: steps in sequence, sometimes a wait, a try, an invoke or a nested par."""
        rng = self.rng
        excluded = (("wait",) if child else ()) + (("invoke", "par") if depth > 0 or child else ())
        ops: list[Op] = []
        for _ in range(rng.randint(1, 3)):
            kind = self._pick(BRANCH, not_=excluded)
            if kind == "sleep":
                ops.append({"op": "sleep", "ms": rng.choice([100, 300, 600])})
            elif kind == "wait":
                outcome = rng.choice(["match", "timeout"])
                ms = MATCH_TIMEOUT_MS if outcome == "match" else rng.choice([300, 800])
                ops.append({"op": "wait", "outcome": outcome, "tok": self._tok(), "ms": ms})
            elif kind == "try":
                ops.append(self._try(depth + 1, child, sequential_only=True))
            elif kind == "invoke":
                ops.append({"op": "invoke", "child": self._sequence(rng.randint(1, 2), depth + 2, child=True)})
            elif kind == "par":
                ops.append(self._par(depth + 1, child))
            else:
                ops.append(self._run())
        return ops

    def _try(self, depth: int, child: bool, sequential_only: bool = False) -> Op:
        """A try around steps in sequence; most often one of them fails for good and is caught.

        Never a parallel inside a try: a branch's StepError caught outside its ``group.parallel`` leaves
        the other branches' memoized steps unvisited, which the engine reports as a divergence.
        """
        rng = self.rng
        excluded = ("invoke",) if child or sequential_only or depth >= 2 else ()
        body: list[Op] = []
        for _ in range(rng.randint(1, 2)):
            kind = self._pick(BODY, not_=excluded)
            if kind == "sleep":
                body.append({"op": "sleep", "ms": rng.choice([100, 300])})
            elif kind == "invoke":
                body.append({"op": "invoke", "child": self._sequence(rng.randint(1, 2), depth + 1, child=True)})
            else:
                body.append(self._run())
        if rng.random() < 0.7 and self._allowed("fail"):
            failing = self._run(failing=True)
            body.insert(rng.randint(0, len(body)), failing)
        return {"op": "try", "body": body}
