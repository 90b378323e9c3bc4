"""HELM run-spec conf files from a task list and an instance budget: `llmkit helm-conf quick|open|TASKS.yaml`.

A task list (`helm_eval/suites/<name>.yaml`) names families of HELM run entries: a scenario, its args (a list
value gives one run per element) and a `share` of the budget. The budget is apportioned over the families by
share (largest remainder), then evenly over each family's runs, the remainder going to the last runs, which is
how the challenge's 600-instance open suite was split.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from llmkit.core.errors import UsageError, problems
from llmkit.core.files import check_file_target, write_atomic
from llmkit.core.yaml_files import YamlFileError, read_mapping

LOG = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).parent / "suites"
DEFAULT_TASK_LIST = "quick"  # the offline suite (suites/quick.yaml): a few minutes on a CPU
SUITES = sorted(path.stem for path in SUITES_DIR.glob("*.yaml"))  # the task lists named without a path
HELM_MODEL = "neurips/local"  # built into crfm-helm: HTTPModelClient at $HELM_HTTP_MODEL_BASE_URL


class ConfError(ValueError):
    """A task list that cannot be read, or a budget that cannot cover its runs."""


class UnknownTaskListError(ConfError, UsageError):
    """A task list named without a path that is none of SUITES: a flag's value the command cannot take, exit 2 (a
    path to a missing file is what it could not read, exit 1)."""


class BudgetUsageError(ConfError, UsageError):
    """A budget given on the command line (--budget) that cannot cover the task list's runs: a usage error, exit 2;
    the task list's own budget is the file's fault, exit 1."""


class TaskFamily(BaseModel):
    """A group of HELM run entries sharing one part of the budget."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently default share

    name: str = Field(description="Label, written as a comment above the family's entries.")
    scenario: str = Field(description="HELM run-spec function name, e.g. mmlu or big_bench.")
    share: int = Field(1, ge=1, description="Relative part of the suite's instance budget.")
    args: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Run-spec args; a list value expands into one run per element."
    )

    @field_validator("name")
    @classmethod
    def _one_line(cls, name: str) -> str:
        # the name is written after '# ' in the conf: past a newline, the rest of it would be read as HOCON
        if not name.isprintable():
            raise ValueError("a family name cannot hold a newline, tab or other non-printing character")
        return name

    @field_validator("scenario")
    @classmethod
    def _one_name(cls, scenario: str) -> str:
        # HELM reads a run entry's name up to its first ':', then splits the rest at ',' and '='; it has no name with
        # a space (helm-run would fail on one only once the server is up)
        if not scenario or any(char in scenario for char in ':,="') or scenario.split() != [scenario]:
            raise ValueError('one HELM run spec name (mmlu, big_bench, ...), with no space and none of : , = or "')
        return scenario

    @field_validator("args", mode="before")
    @classmethod
    def _scalars_as_text(cls, args: object) -> object:
        """`num_parenthesis_pairs: [2, 3]` as `["2", "3"]`: a run entry is text, which HELM reads back as a number."""
        if not isinstance(args, dict):
            return args
        return {key: list(map(_helm_text, v)) if isinstance(v, list) else _helm_text(v) for key, v in args.items()}

    @field_validator("args")
    @classmethod
    def _no_reserved_args(cls, args: dict, info: ValidationInfo) -> dict:
        reserved = {"model", "max_eval_instances"} & set(args)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are set by the generator, not the task list")
        for key, value in args.items():
            if value == []:
                raise ValueError(f"{key}: an empty list makes no run; give at least one value")
            if isinstance(value, list) and (twice := sorted({item for item in value if value.count(item) > 1})):
                raise ValueError(f"{key}: {', '.join(map(repr, twice))} listed twice would run the same entry twice")
            for item in value if isinstance(value, list) else [value]:
                # HELM splits a run entry's args at ',' and '=', and the conf quotes the entry with '"'
                if any(char in f"{key}{item}" for char in ',="') or not key:  # an empty value is one (subtask=)
                    raise ValueError(f'{key}={item!r}: a name or value cannot hold , = or " (nor a name be empty)')
                if any(text != text.strip() or not text.isprintable() for text in (key, item)):
                    # HELM keeps the spaces: "induction " passed the run-spec check, then helm-run failed on it
                    raise ValueError(
                        f"family {info.data.get('name')!r}: {key!r}={item!r}: a name or value cannot start or end "
                        "with a space, nor hold a newline, tab or other non-printing character"
                    )
        return args

    def run_args(self) -> list[dict[str, str]]:
        """One ordered arg dict per run: the cartesian product of the list-valued args."""
        choices = [value if isinstance(value, list) else [value] for value in self.args.values()]
        return [dict(zip(self.args, combo, strict=True)) for combo in itertools.product(*choices)]


def _helm_text(value: object) -> object:
    """A YAML number or boolean as HELM's run entries write it; any other value as it is (for the type check)."""
    if isinstance(value, bool):  # before int, which bool is
        return str(value).lower()  # HELM's own entries say use_few_shot=false; its run specs compare .lower()
    return str(value) if isinstance(value, int | float) else value


class TaskList(BaseModel):
    """A suite: its families and, optionally, its instance budget."""

    model_config = ConfigDict(extra="forbid")

    budget: int | None = Field(None, ge=1, description="Total eval instances; none: helm-run's --max-eval-instances.")
    families: list[TaskFamily] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_differ(self) -> TaskList:
        first: dict[str, int] = {}
        for index, family in enumerate(self.families):
            if (other := first.setdefault(family.name, index)) != index:
                raise ValueError(
                    f"families[{other}] and families[{index}] are both named {family.name!r}; give each its own name "
                    "(it labels the family's entries in the conf)"
                )
        return self


class RunEntry(BaseModel):
    family: str
    description: str
    max_eval_instances: int | None = None


def is_conf_file(path: Path) -> bool:
    """A HELM conf (run by helm-run as it is), not a task list to generate one from: told by its .conf suffix."""
    return path.suffix.lower() == ".conf"


def load_task_list(name_or_path: str | Path) -> TaskList:
    """One of SUITES (the project's task lists) or a path to a task-list YAML."""
    path = Path(name_or_path)
    if is_conf_file(path):  # its HOCON would fail as YAML, with a parser error that says nothing of this
        raise ConfError(
            f"{path} is already a HELM conf; helm-conf makes one from a task list ({', '.join(SUITES)}, or a .yaml "
            "file): give the .conf to `llmkit helm-eval --conf`"
        )
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        named = path.parent == SUITES_DIR and Path(name_or_path).name == str(name_or_path)
        error = UnknownTaskListError if named else ConfError
        raise error(f"no task list {name_or_path!r} (known: {', '.join(SUITES)}, or a path to a .yaml file)")
    try:
        return TaskList.model_validate(read_mapping(path, "a task list", "families: ...")[0])
    except YamlFileError as err:
        if err.unreadable:
            raise ConfError(f"{path}: cannot read it: {err}") from None
        raise ConfError(f"invalid task list {path}:\n  - {err}") from None
    except ValidationError as err:
        raise ConfError(f"invalid task list {path}:\n  - " + "\n  - ".join(problems(err))) from None


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder; ties go to the earlier weight)."""
    # In integers: float quotas made equal remainders differ in their last bits (216 over [8, 49, 10, 60, 26, 30,
    # 46, 35] gave the tie to the sixth weight, not the first).
    whole = sum(weights)
    parts = [total * weight // whole for weight in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))  # stable: ties in order
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _runs_and_shares(tasks: TaskList) -> tuple[list[int], list[int]]:
    return [len(family.run_args()) for family in tasks.families], [family.share for family in tasks.families]


SEARCH_STEPS = 50_000  # stretches of budgets least_budget goes through (under a second here) before naming one it has
# not shown to be the least; the shares that need more are uneven several ways at once (1, 3, 27322287, 453244222)
SEARCH_STRIDES = 1000  # the strides least_budget picks from (_stride)


def least_budget(tasks: TaskList) -> tuple[int, bool]:
    """The least budget from which every budget covers every run (each family at least one instance per run), and
    whether it is the least. Largest remainder is not monotone (the Alabama paradox): a budget may cover and the next
    one not ([29, 30, 7, 17] over [2, 3, 2, 1] runs: 18 covers, 19 does not), so it is one past the last budget at
    which some family is short (`_last_short`). Where that search runs past SEARCH_STEPS, the budget named is one
    from which every budget was checked, not known to be the least."""
    runs, shares = _runs_and_shares(tasks)
    steps = [SEARCH_STEPS]
    last, exact = -1, True
    # families whose short budgets may reach highest first: the others' searches stop at what is found
    for family in sorted(range(len(shares)), key=lambda i: -_top_short(i, runs, shares)):
        found, done = _last_short(family, runs, shares, last, steps)
        last, exact = max(last, found), exact and done
    return last + 1, exact


def _top_short(family: int, runs: list[int], shares: list[int]) -> int:
    """Over this budget `family` is never short: its quota is at least its runs, or its remainder is over (k - 1) /
    k among k families, and such a remainder is never passed over: a family passed over has K >= R families ranked
    above it, and R, the sum of all k remainders (in units of W), is then at least (K + 1) times its own."""
    n, share, whole, k = runs[family], shares[family], sum(shares), len(shares)
    return min(-(-n * whole // share) - 1, (n * k - 1) * whole // (k * share))


def _last_short(family: int, runs: list[int], shares: list[int], above: int, steps: list[int]) -> tuple[int, bool]:
    """The last budget over `above` at which `family` gets fewer instances than runs (or one at most `above`), and
    whether that is known (False: `steps[0]`, the search's allowance, ran out; the budget is then the lowest one
    from which all were checked).

    Under `low` its quota is at most runs - 2: short. From `low` on it is runs - 1, and the family is short where it
    is passed over for the extra instances. With r_i = budget * share_i mod W (W the shares' sum) and k families,
    the extras number sum(r) / W, and `family` (j) is passed over where as many families rank above it, which comes
    to: sum over the others of tau_i = (r_j - r_i) mod W (W where r_i = r_j and i is earlier, winning the tie)
    >= k * r_j. Along budgets `stride` apart each tau_i moves by a fixed amount until it wraps, and r_j by
    stride * share_j, so between wraps the test is linear in the budget and solved at once: the search goes down
    from `_top_short` wrap to wrap, in each of the stride's classes of budgets.
    """
    n, share, whole, k = runs[family], shares[family], sum(shares), len(shares)
    low = -(-(n - 1) * whole // share)
    top, bottom = _top_short(family, runs, shares), max(low, above + 1)
    if top < bottom:
        return low - 1, True
    others = [((share - s) % whole, i < family) for i, s in enumerate(shares) if i != family]
    stride = _stride([d for d, _ in others], whole, top - bottom + 1)
    moves = [_signed(stride * d, whole) for d, _ in others]
    slope = k * stride * share - sum(moves)
    found = low - 1
    for start in range(top, max(top - stride, bottom - 1), -1):
        budget = start
        while budget > max(found, bottom - 1):
            if steps[0] == 0:  # unchecked: this budget, and the classes not begun (the next starts under `start`)
                return max(found, budget, start - 1 if start - 1 > top - stride else -1), False
            steps[0] -= 1
            taus = [budget * d % whole or (whole if earlier else 0) for d, earlier in others]
            gap = sum(taus) - k * (budget * share % whole)
            if gap >= 0:
                found = budget
                break
            until_wrap = (budget - bottom) // stride
            for (_, earlier), tau, move in zip(others, taus, moves, strict=True):
                if move > 0:
                    until_wrap = min(until_wrap, (tau - earlier) // move)
                elif move < 0:
                    until_wrap = min(until_wrap, (whole - 1 + earlier - tau) // -move)
            if slope > 0 and -(gap // slope) <= until_wrap:
                found = max(found, budget - stride * -(gap // slope))
                break
            budget -= stride * (until_wrap + 1)
    return found, True


def _stride(moves: list[int], whole: int, length: int) -> int:
    """The step, at most SEARCH_STRIDES, over which the taus of `_last_short` wrap least often in `length`
    budgets: with shares near a fraction of the sum (two of about half) each wraps at almost every budget, and
    over every other budget hardly at all."""
    return min(
        range(1, min(SEARCH_STRIDES, length) + 1),
        key=lambda stride: stride + length * sum(abs(_signed(stride * d, whole)) for d in moves) // whole,
    )


def _signed(value: int, modulus: int) -> int:
    value %= modulus
    return value - modulus if value > modulus // 2 else value


def _least_budget_hint(tasks: TaskList) -> str:
    # counted only once a budget falls short, as that search can take a while
    least, exact = least_budget(tasks)
    if exact:
        return f"give at least {least}: every budget from {least} on covers every run of this task list"
    too_uneven = "its shares are too uneven to find the least"
    return f"every budget from {least} on covers every run of this task list ({too_uneven})"


def _split_evenly(total: int, count: int) -> list[int]:
    base, extra = divmod(total, count)
    return [base + (i >= count - extra) for i in range(count)]


def _description(scenario: str, args: dict[str, str], model: str, max_eval_instances: int | None) -> str:
    pairs = {"model": model, **args}
    if max_eval_instances is not None:
        pairs["max_eval_instances"] = str(max_eval_instances)
    return f"{scenario}:" + ",".join(f"{key}={value}" for key, value in pairs.items())


def generate(
    tasks: TaskList, *, budget: int | None = None, cap: int | None = None, model: str = HELM_MODEL
) -> list[RunEntry]:
    """Run entries for a task list.

    Args:
        tasks: the suite's families.
        budget: total eval instances (default: the task list's own; none leaves the count to helm-run).
        cap: at most this many instances per run (a quick look at a budgeted suite).
        model: HELM model name in every entry.
    """
    too_small = ConfError if budget is None else BudgetUsageError  # the task list's budget, or the caller's
    budget = tasks.budget if budget is None else budget
    if cap is not None and cap < 1:
        raise ConfError(f"at most {cap} instances per run leaves nothing to evaluate: give 1 or more")
    runs = [(family, args) for family in tasks.families for args in family.run_args()]
    first: dict[tuple, str] = {}
    for family, args in runs:  # one run twice would be run, and averaged into the scores, twice
        # TaskList refuses two families of one name, so a name stands for its family here
        key = (family.scenario, tuple(sorted(args.items())))
        if (other := first.setdefault(key, family.name)) != family.name:
            shown = ",".join(f"{name}={value}" for name, value in args.items())
            raise ConfError(f"families {other!r} and {family.name!r} both run {family.scenario}:{shown}; keep one")
    if budget is None:
        counts = [cap] * len(runs)
    else:
        if budget < len(runs):
            raise too_small(
                f"a budget of {budget} instances cannot cover the {len(runs)} runs of this task list; "
                + _least_budget_hint(tasks)
            )
        counts = []
        shares = apportion(budget, [f.share for f in tasks.families])
        for family, family_budget in zip(tasks.families, shares, strict=True):
            n_runs = len(family.run_args())
            if family_budget < n_runs:
                raise too_small(
                    f"a budget of {budget}: family {family.name!r} gets {family_budget} instances for its {n_runs} "
                    f"runs; {_least_budget_hint(tasks)}"
                )
            counts += [n if cap is None else min(n, cap) for n in _split_evenly(family_budget, n_runs)]
    return [
        RunEntry(family=family.name, description=_description(family.scenario, args, model, n), max_eval_instances=n)
        for (family, args), n in zip(runs, counts, strict=True)
    ]


# The first line of every conf written here: `write_conf` writes over a file only when it begins so (or is empty),
# never over a training config or any other file that happens to be named by --out.
CONF_HEADER = "# HELM run entries written by llmkit helm-conf (it writes over a file only when this is its first line)"


def render_conf(entries: list[RunEntry]) -> str:
    """HELM's conf syntax (HOCON): CONF_HEADER, one `{description, priority}` per run, a comment above each family."""
    lines = [CONF_HEADER, "entries: ["]
    for family, group in itertools.groupby(entries, key=lambda entry: entry.family):
        lines += ["", f"# {family}"]
        lines += [f'{{description: "{entry.description}", priority: 1}}' for entry in group]
    return "\n".join([*lines, "]", ""])


def write_conf(entries: list[RunEntry], path: Path, *, own_folder: bool = False) -> Path:
    """Write atomically (temp file + rename), so a half-written conf never exists. `own_folder`: `path` is in a
    folder the caller keeps its confs in (helm-eval's <out>/confs), whose files are its earlier runs' even where an
    older version wrote them without CONF_HEADER.

    Raises:
        FileExistsError: `path` is a file this module did not write (see CONF_HEADER).
        OSError: `path` is a folder, or cannot be written (see `check_file_target`).
    """
    check_file_target(path)  # its message, not mkdir's "File exists" or rename's "Is a directory"
    if not own_folder and path.is_file() and not _written_here(path):
        raise FileExistsError(
            f"{path} is a file helm-conf did not write (its first line is not helm-conf's header); give a new "
            "path, or remove it first"
        )
    return write_atomic(path, render_conf(entries), parents=True)


def _written_here(path: Path) -> bool:
    """`path` is empty or begins with CONF_HEADER: a file that nothing but an earlier conf would be lost from."""
    with path.open("rb") as f:
        first = f.readline(len(CONF_HEADER) + 2)
    return first in (b"", f"{CONF_HEADER}\n".encode())


def split_description(description: str) -> tuple[str, dict[str, str]]:
    """(scenario, args in their order) of a run-entry description `scenario:key=value,...`."""
    scenario, _, arg_text = description.partition(":")
    return scenario.strip(), dict(pair.split("=", 1) for pair in arg_text.split(",") if pair)


def normalize_description(description: str, model: str = HELM_MODEL) -> tuple[str, frozenset[tuple[str, str]]]:
    """(scenario, {(key, value)}) with the model set to `model`: entries compare equal whatever the arg order."""
    scenario, args = split_description(description)
    args["model"] = model
    return scenario, frozenset(args.items())


def capped_entries(descriptions: list[str], cap: int) -> list[RunEntry]:
    """The entries of a conf with at most `cap` instances each (fewer where the entry asks for fewer).

    helm-run's --max-eval-instances only fills in entries that set no count, and the challenge's confs set one
    on every entry, so a cap has to be written into the entries themselves.
    """
    entries = []
    for description in descriptions:
        scenario, args = split_description(description)
        own = args.pop("max_eval_instances", "")
        count = min(int(own), cap) if own.isdigit() else cap
        model = args.pop("model", HELM_MODEL)
        entries.append(RunEntry(family=scenario, description=_description(scenario, args, model, count)))
    return entries
