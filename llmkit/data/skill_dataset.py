"""The skill config's training data (axolotl_configs/smollm2-135m-skill.yml), generated here: no download.

    llmkit default-dataset [--check]      (regenerates every shipped dataset, this one included)

The skill is variable substitution as HELM's `synthetic_reasoning:mode=variable_substitution` measures it: a rule
such as `X + Y = Y + X` and a substitution for each symbol (`X by " red lamp "`) give the rule with every symbol
replaced (`red lamp + ... = ...`). Rows are laid out exactly as HELM's generation adapter lays out that scenario
(instructions, in-context examples, "Target:"), and the model learns to write the target itself.

Why the rows cannot contain the scenario's instances: HELM fills its rules with 22 animal and fruit names; every
word substituted here comes from `WORDS`, which shares none of them (a test checks it). Every 13-word window of a
HELM instance holds at least one substituted word, so no such window can occur here, and `llmkit decontaminate`
confirms 0 overlapping instances on the scenario's 10,000 eval instances.
"""

from __future__ import annotations

import random

from llmkit.core.assets import CONFIGS_DIR
from llmkit.core.models import DEFAULT_MODEL_EOS
from llmkit.data.rows import InputOutputRow, LabelledText

DATASET_FILE = CONFIGS_DIR / "data" / "variable_substitution.jsonl"
SEED = 20261203
NUM_ROWS = 1000
INSTRUCTIONS = "Please solve the following problem."  # HELM's run spec for synthetic_reasoning

RULE_SYMBOLS = ["X", "Y", "Z"]
MATH_SYMBOLS = ["+", "-", "*", "="]
# Colours, tools, vehicles, instruments, weather, furniture: none of HELM's animal and fruit names.
WORDS = """
red blue green yellow purple black silver golden crimson violet teal
hammer wrench drill ladder shovel chisel pliers anvil rake saw
car truck train bicycle tram rocket canoe wagon sled scooter
piano violin drum flute guitar trumpet harp cello
rain snow thunder cloud storm fog breeze frost
chair table lamp sofa shelf mirror carpet pillow
""".split()


def _substitution(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))


def make_problem(rng: random.Random) -> tuple[str, str]:
    """One (input, target) pair in HELM's wording: 2-3 symbol occurrences and 2-3 operators, shuffled."""
    symbols = [rng.choice(RULE_SYMBOLS) for _ in range(rng.randint(2, 3))]
    rule = symbols + [rng.choice(MATH_SYMBOLS) for _ in range(rng.randint(2, 3))]
    rng.shuffle(rule)
    substitutions = {symbol: _substitution(rng) for symbol in sorted(set(symbols))}
    listed = " , ".join(f'{symbol} by " {value} "' for symbol, value in substitutions.items())
    target = " ".join(substitutions.get(token, token) for token in rule)
    return f"Rules: {' '.join(rule)} | Substitutions: {listed}", target


def generation_prompt(instructions: str, shots: list[tuple[str, str]], query: str) -> str:
    """HELM's generation adapter for this scenario: instructions, solved examples, the query, "Target:"."""
    blocks = [f"{instructions}\n", *(f"{text}\nTarget: {target}\n" for text, target in shots), f"{query}\nTarget:"]
    return "\n".join(blocks)


def generate_rows(num_rows: int = NUM_ROWS, seed: int = SEED) -> list[InputOutputRow]:
    """`input_output` rows, deterministic for a seed: the prompt masked, " <target>" and EOS trained."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        # Few examples (HELM gives five): the rule is learned, not copied from the examples, and a CPU spends its
        # time on fewer prompt tokens.
        shots = [make_problem(rng) for _ in range(rng.choice([0, 0, 0, 1, 1, 2]))]
        query, target = make_problem(rng)
        prompt = LabelledText(label=False, text=generation_prompt(INSTRUCTIONS, shots, query))
        answer = LabelledText(label=True, text=" " + target + DEFAULT_MODEL_EOS)
        rows.append(InputOutputRow(segments=[prompt, answer]))
    return rows
