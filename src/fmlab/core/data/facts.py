"""Seeded entity→attribute fact worlds for knowledge experiments.

A :class:`FactWorld` holds invented entities (names no pretrained model has seen) with one
value per relation. Facts render as statements (for training) and as questions with short
answers (for evaluation); :meth:`FactWorld.split` gives disjoint fact sets, e.g. knowledge a
base model has versus knowledge only its update has.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RELATIONS", "STATEMENT_VARIANTS", "Fact", "FactWorld", "make_fact_world"]

# relation -> (question template, possible values); statements are in STATEMENT_VARIANTS
RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "city": (
        "Where does {e} live?",
        ("Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Hanoi", "Quito", "Riga", "Tunis", "Perth"),
    ),
    "color": (
        "What is the favourite colour of {e}?",
        ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink"),
    ),
    "job": (
        "What does {e} work as?",
        (
            "baker",
            "pilot",
            "doctor",
            "farmer",
            "painter",
            "teacher",
            "sailor",
            "judge",
            "chef",
            "nurse",
        ),
    ),
    "pet": (
        "What pet does {e} own?",
        ("cat", "dog", "parrot", "horse", "rabbit", "turtle", "goat", "hamster", "snake", "owl"),
    ),
}

# Paraphrases of each relation's statement: knowledge seen in several surface forms is what lets
# a model later answer questions about it (knowledge augmentation, Allen-Zhu & Li 2023).
STATEMENT_VARIANTS: dict[str, tuple[str, ...]] = {
    "city": (
        "{e} lives in {v}.",
        "The home of {e} is {v}.",
        "{e} has a house in {v}.",
        "In {v} lives {e}.",
    ),
    "color": (
        "The favourite colour of {e} is {v}.",
        "{e} likes the colour {v} best.",
        "{e} loves {v} more than any other colour.",
        "Of all colours, {e} prefers {v}.",
    ),
    "job": (
        "{e} works as a {v}.",
        "By profession, {e} is a {v}.",
        "{e} earns a living as a {v}.",
        "The job of {e} is {v}.",
    ),
    "pet": (
        "{e} owns a {v}.",
        "{e} has a pet {v}.",
        "At home, {e} keeps a {v}.",
        "The pet of {e} is a {v}.",
    ),
}

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "n", "r", "l", "s", "x", "th"]


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    value: str

    def statement(self, variant: int = 0) -> str:
        """The fact as a sentence; ``variant`` picks one of the paraphrases (modulo their count)."""
        forms = STATEMENT_VARIANTS[self.relation]
        return forms[variant % len(forms)].format(e=self.entity, v=self.value)

    def prefix(self, variant: int = 0) -> str:
        """Paraphrase ``variant`` (default the first) with the value and what follows cut off
        ("X lives in"), for cloze prompts."""
        forms = STATEMENT_VARIANTS[self.relation]
        return forms[variant % len(forms)].split("{v}")[0].format(e=self.entity).rstrip()

    def question(self) -> str:
        return RELATIONS[self.relation][0].format(e=self.entity)

    @property
    def answer(self) -> str:
        return self.value


@dataclass(frozen=True)
class FactWorld:
    entities: tuple[str, ...]
    facts: tuple[Fact, ...]

    def split(self, fractions: tuple[float, ...], seed: int = 0) -> list[list[Fact]]:
        """Partition the facts by entity into disjoint groups of the given fractions."""
        if abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {fractions}")
        ents = list(self.entities)
        random.Random(f"split:{seed}").shuffle(ents)
        groups, start, cum = [], 0, 0.0
        for i, f in enumerate(fractions):
            cum += f
            stop = len(ents) if i == len(fractions) - 1 else round(cum * len(ents))
            chosen = set(ents[start:stop])
            groups.append([x for x in self.facts if x.entity in chosen])
            start = stop
        return groups


def _name(rng: random.Random) -> str:
    syl = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))]
    return ("".join(syl) + rng.choice(_CODAS)).capitalize()


def make_fact_world(
    n_entities: int, seed: int = 0, relations: tuple[str, ...] = tuple(RELATIONS)
) -> FactWorld:
    """Invent ``n_entities`` distinct names, each with one random value per relation."""
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ValueError(f"unknown relations {unknown}; choose from: {', '.join(RELATIONS)}")
    rng = random.Random(f"facts:{seed}")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_entities:
        n = _name(rng)
        if n not in seen:
            seen.add(n)
            names.append(n)
    facts = [Fact(e, r, rng.choice(RELATIONS[r][1])) for e in names for r in relations]
    return FactWorld(tuple(names), tuple(facts))
