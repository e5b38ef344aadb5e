"""A synthetic knowledge world for knowledge-infusion experiments (arXiv:2509.19371; notes §2): fictional
entities with attributes, generated offline and deterministically from a seed.

- **General** knowledge: people (birthplace, profession, favourite colour) - what a model "already knew" and
  must retain. **Domain** knowledge: compounds (discoverer, element, use) - what is infused. The two share no
  entity and no attribute value.
- Every fact is rendered by several templates, one of them a question and its answer (the paper turns
  Wikidata triples into questions with templates); the question is what evaluation asks.
- Recall of a fact is multiple choice: the model scores every value its relation can take after the question
  and is right when the true value scores highest (``zoo/callbacks/fact_recall.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_SYLLABLES = "ka lo mi ra ve tu sen dor bel fa nim gor ti ush pel van zi ro qua mer lin das hop"
_SYLLABLES = _SYLLABLES.split()


@dataclass(frozen=True)
class Relation:
    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]  # templates over {entity} and {value}
    question: str  # a question over {entity}; the answer is " {value}"


def _words(rng: random.Random, count: int, syllables: int, exclude: set[str]) -> list[str]:
    """``count`` new capitalised words of ``syllables`` syllables, none in ``exclude`` (which grows); one
    syllable more while they would take over half the name space (so large worlds stay quick to draw)."""
    while count + len(exclude) > len(_SYLLABLES) ** syllables // 2:
        syllables += 1
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
        if word not in exclude:
            exclude.add(word)
            words.append(word)
    return words


def relations(seed: int) -> tuple[tuple[Relation, ...], tuple[Relation, ...]]:
    """The general (people) and domain (compound) relations with their value sets."""
    rng, used = random.Random(f"relations:{seed}"), set()
    cities = tuple(_words(rng, 24, 2, used))
    professions = ("baker", "pilot", "farmer", "painter", "doctor", "sailor", "teacher", "miner", "judge", "poet")
    colours = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "brown")
    chemists = tuple(_words(rng, 24, 3, used))
    elements = ("iron", "copper", "carbon", "sodium", "silver", "zinc", "nickel", "cobalt", "sulfur", "tin")
    uses = ("glass", "paint", "medicine", "fuel", "soap", "cement", "dyes", "batteries", "fertiliser", "paper")
    general = (
        Relation(
            "birthplace",
            cities,
            ("{entity} was born in {value}.", "The birthplace of {entity} is {value}.", "{entity} grew up in {value}."),
            "Q: Where was {entity} born? A:",
        ),
        Relation(
            "profession",
            professions,
            (
                "{entity} works as a {value}.",
                "By trade, {entity} is a {value}.",
                "{entity} earns a living as a {value}.",
            ),
            "Q: What does {entity} do for a living? A:",
        ),
        Relation(
            "colour",
            colours,
            (
                "The favourite colour of {entity} is {value}.",
                "{entity} likes the colour {value} best.",
                "{entity} loves {value}.",
            ),
            "Q: Which colour does {entity} like best? A:",
        ),
    )
    domain = (
        Relation(
            "discoverer",
            chemists,
            (
                "{entity} was first made by {value}.",
                "The chemist {value} discovered {entity}.",
                "{value} found {entity}.",
            ),
            "Q: Who discovered {entity}? A:",
        ),
        Relation(
            "element",
            elements,
            (
                "{entity} is a compound of {value}.",
                "The main element in {entity} is {value}.",
                "{entity} contains {value}.",
            ),
            "Q: Which element is in {entity}? A:",
        ),
        Relation(
            "use",
            uses,
            (
                "{entity} is used to make {value}.",
                "Factories turn {entity} into {value}.",
                "{entity} goes into {value}.",
            ),
            "Q: What is {entity} used for? A:",
        ),
    )
    return general, domain


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: Relation
    value: str

    def statements(self) -> list[str]:
        """Every rendering of the fact, the question with its answer last."""
        sentences = [t.format(entity=self.entity, value=self.value) for t in self.relation.statements]
        return [*sentences, f"{self.question()} {self.value}."]

    def question(self) -> str:
        return self.relation.question.format(entity=self.entity)


@dataclass(frozen=True)
class KnowledgeWorld:
    general: tuple[Fact, ...]  # people's facts, entity by entity
    domain: tuple[Fact, ...]  # compounds' facts, entity by entity: the first k are what an infusion of k adds


def build_world(general_entities: int, domain_entities: int, seed: int) -> KnowledgeWorld:
    """``general_entities`` people and ``domain_entities`` compounds with one value per relation each."""
    general_relations, domain_relations = relations(seed)
    rng, used = random.Random(f"world:{seed}"), set()
    for relation in (*general_relations, *domain_relations):
        used.update(relation.values)
    firsts = _words(rng, min(general_entities, 200), 2, used)  # first names may repeat; full names do not
    people = [f"{rng.choice(firsts)} {last}" for last in _words(rng, general_entities, 3, used)]
    compounds = [f"{name}ite" for name in _words(rng, domain_entities, 3, used)]

    def facts(entities: list[str], relations_: tuple[Relation, ...]) -> tuple[Fact, ...]:
        return tuple(Fact(e, r, rng.choice(r.values)) for e in entities for r in relations_)

    return KnowledgeWorld(facts(people, general_relations), facts(compounds, domain_relations))
