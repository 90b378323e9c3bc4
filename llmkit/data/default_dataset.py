"""The embedded default config's training data, generated here: no download, same bytes on every run.

    llmkit default-dataset [--check]      (regenerates every shipped dataset: llmkit/data/shipped.py)

Easy multiple-choice questions (parity, comparisons, arithmetic, categories) laid out exactly as HELM's
multiple_choice_joint adapter lays them out for `simple_mcqa` and MMLU: instructions, in-context examples,
"Question: ...", "A. ...", and a final "Answer:" that the model completes with " <letter>" and EOS.
The numbers and phrasings are our own: simple_mcqa asks "Is N even or odd?" for N in 10..99, never seen here.
Rows are `input_output` segments: the prompt (masked) and the answer letter with the default model's EOS (trained;
input_output adds no EOS of its own, as in axolotl).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from llmkit.core.assets import CONFIGS_DIR
from llmkit.core.models import DEFAULT_MODEL_EOS
from llmkit.data.rows import InputOutputRow, LabelledText

DATASET_FILE = CONFIGS_DIR / "data" / "mcqa_letters.jsonl"
SEED = 20231
NUM_ROWS = 400
SIMPLE_INSTRUCTIONS = "Answer the following questions with a single letter only."  # HELM's simple_mcqa run spec
SUBJECT_INSTRUCTIONS = "The following are multiple choice questions (with answers) about {subject}."  # HELM's MMLU
MAX_SHOTS = 5  # HELM's max_train_instances for multiple choice


class Question(NamedTuple):
    text: str
    choices: list[str]
    answer: int  # index of the correct choice


CATEGORIES = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum"],
    "animal": ["cat", "dog", "horse", "lion", "mouse", "rabbit", "sheep", "tiger", "whale", "zebra"],
    "color": ["blue", "green", "purple", "red", "yellow", "brown", "pink", "white", "black", "gray"],
    "vehicle": ["bicycle", "bus", "car", "motorcycle", "train", "truck", "tram", "boat", "airplane", "scooter"],
    "tool": ["hammer", "saw", "screwdriver", "wrench", "drill", "shovel", "chisel", "pliers", "axe", "rake"],
}


def _shuffled(rng: random.Random, correct: str, wrong: list[str]) -> tuple[list[str], int]:
    choices = [correct, *wrong]
    rng.shuffle(choices)  # the right letter must vary, or the model learns "always A"
    return choices, choices.index(correct)


def parity(rng: random.Random) -> Question:
    n = rng.randint(100, 9999)  # never a two-digit number: those are simple_mcqa's test questions
    text = rng.choice(["Is {n} even or odd?", "Is the number {n} even or odd?", "Is {n} an odd or an even number?"])
    choices, answer = _shuffled(rng, "Even" if n % 2 == 0 else "Odd", ["Odd" if n % 2 == 0 else "Even"])
    return Question(text.format(n=n), choices, answer)


def compare(rng: random.Random) -> Question:
    numbers = rng.sample(range(1, 1000), rng.choice([2, 3, 4]))
    largest = rng.random() < 0.5
    target = max(numbers) if largest else min(numbers)
    text = f"Which of these numbers is the {'largest' if largest else 'smallest'}?"
    choices, answer = _shuffled(rng, str(target), [str(n) for n in numbers if n != target])
    return Question(text, choices, answer)


def greater_than(rng: random.Random) -> Question:
    a, b = rng.sample(range(1, 1000), 2)
    choices, answer = _shuffled(rng, "Yes" if a > b else "No", ["No" if a > b else "Yes"])
    return Question(f"Is {a} greater than {b}?", choices, answer)


def arithmetic(rng: random.Random) -> Question:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    op, value = rng.choice([("+", a + b), ("-", a - b), ("times", a * b)])
    wrong: set[int] = set()
    while len(wrong) < 3:  # offsets are never 0: every guess is wrong; repeats are drawn again
        wrong.add(value + rng.choice([-10, -2, -1, 1, 2, 10]))
    choices, answer = _shuffled(rng, str(value), [str(w) for w in sorted(wrong)])
    return Question(f"What is {a} {op} {b}?", choices, answer)


def category(rng: random.Random) -> Question:
    name, *others = rng.sample(sorted(CATEGORIES), 4)
    wrong = [rng.choice(CATEGORIES[other]) for other in others]
    choices, answer = _shuffled(rng, rng.choice(CATEGORIES[name]), wrong)
    return Question(f"Which of the following is a {name}?", choices, answer)


TASKS: dict[str, tuple[Callable[[random.Random], Question], str]] = {
    "parity": (parity, "numbers"),
    "compare": (compare, "numbers"),
    "greater_than": (greater_than, "numbers"),
    "arithmetic": (arithmetic, "arithmetic"),
    "category": (category, "everyday words"),
}


def example_block(question: Question, with_answer: bool) -> str:
    """One HELM multiple_choice_joint example: input, lettered references, output (or the bare "Answer:")."""
    text, choices, answer = question
    lines = [f"Question: {text}", *(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))]
    last = f"Answer: {chr(ord('A') + answer)}\n" if with_answer else "Answer:"
    return "\n".join([*lines, last])


def helm_prompt(instructions: str, shots: list[Question], question: Question) -> str:
    """HELM's prompt: instructions block, in-context examples and the question, joined by blank lines."""
    blocks = [instructions + "\n", *(example_block(shot, True) for shot in shots), example_block(question, False)]
    return "\n".join(blocks)


def generate_rows(num_rows: int = NUM_ROWS, seed: int = SEED) -> list[InputOutputRow]:
    """`input_output` rows, deterministic for a seed (a different seed gives held-out questions)."""
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        task, subject = TASKS[sorted(TASKS)[index % len(TASKS)]]
        if rng.random() < 0.7:
            instructions = SIMPLE_INSTRUCTIONS
        else:
            instructions = SUBJECT_INSTRUCTIONS.format(subject=subject)
        # Mostly short prompts (training time on 2 CPU cores is spent per token); some as long as HELM's.
        shots = [task(rng) for _ in range(rng.choice([0, 0, 1, 2, 3, MAX_SHOTS]))]
        question = task(rng)
        prompt = LabelledText(label=False, text=helm_prompt(instructions, shots, question))
        answer = LabelledText(label=True, text=" " + chr(ord("A") + question.answer) + DEFAULT_MODEL_EOS)
        rows.append(InputOutputRow(segments=[prompt, answer]))
    return rows
