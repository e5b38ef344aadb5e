"""zoo's embedded search corpus: a synthetic world of chemists and the compounds they discovered, generated offline
and deterministically (QAgent's smallest honest experiment, notes §5.8), with one- and two-hop questions.

Passages, one per entity:

- a chemist: ``"Dorvanu is a chemist. Dorvanu was born in Lomira. The favourite colour of Dorvanu is red."``;
- a compound: ``"Kalomite was discovered by Dorvanu. Kalomite contains iron. Kalomite is used to make glass."``.

Questions ask one hop (``"Who discovered Kalomite?"``, ``"Where was Dorvanu born?"``) or two
(``"Where was the discoverer of Kalomite born?"``). A two-hop question names only the compound, so BM25 on its
original wording ranks the compound's passage first: it holds the bridge (the discoverer), not the answer; the
answer's passage is found by a second query about the bridge (``"Dorvanu born"``). Rewriting matters.

Each question carries its hops, from which :func:`teacher_transcript` writes the transcript a competent agent
would produce (plan, search, information, reflection, ... answer), or a sloppy one that searches the question as
it is and answers what the first passage offers (the SFT warm start's imperfect teacher).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from zoo.infusion.knowledge import _words, relations
from zoo.search.corpus import Passage


@dataclass(frozen=True)
class Hop:
    entity: str
    keyword: str  # the word a good query pairs with the entity
    value: str
    finding: str  # what the hop established, as a reflection states it


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    hops: tuple[Hop, ...]


@dataclass(frozen=True)
class SearchWorld:
    passages: tuple[Passage, ...]
    questions: tuple[Question, ...]


def build_search_world(chemists: int = 80, compounds: int = 160, seed: int = 0) -> SearchWorld:
    """``chemists`` chemists (birthplace, favourite colour) and ``compounds`` compounds (discoverer, element, use),
    every chemist the discoverer of about ``compounds / chemists`` of them."""
    general, domain = relations(seed)
    cities, colours = general[0].values, general[2].values
    elements, uses = domain[1].values, domain[2].values
    rng, used = random.Random(f"search-world:{seed}"), set(cities)
    values = [v.lower() for v in (*cities, *colours, *elements, *uses)]

    def names_(count: int) -> list[str]:  # no name holds a value (a substring match would be a false hit)
        drawn = [w for w in _words(rng, 2 * count, 3, used) if not any(v in w.lower() for v in values)]
        if len(drawn) < count:
            raise ValueError(f"could not draw {count} names; ask for fewer entities")
        return drawn[:count]

    names = names_(chemists)
    compound_names = [f"{w}ite" for w in names_(compounds)]
    born = {n: rng.choice(cities) for n in names}
    colour = {n: rng.choice(colours) for n in names}
    passages, questions, birthplace_of, favourite_of = [], [], {}, {}
    for n in names:
        text = f"{n} is a chemist. {n} was born in {born[n]}. The favourite colour of {n} is {colour[n]}."
        passages.append(Passage(f"chemist:{n}", n, text))
        birthplace_of[n] = Hop(n, "born", born[n], f"{n} was born in {born[n]}")
        favourite_of[n] = Hop(n, "colour", colour[n], f"the favourite colour of {n} is {colour[n]}")
        questions += [
            Question(f"Where was {n} born?", born[n], (birthplace_of[n],)),
            Question(f"What is the favourite colour of {n}?", colour[n], (favourite_of[n],)),
        ]
    for k, c in enumerate(compound_names):
        d = names[k % chemists] if k < chemists else rng.choice(names)  # its discoverer
        element, use = rng.choice(elements), rng.choice(uses)
        text = f"{c} was discovered by {d}. {c} contains {element}. {c} is used to make {use}."
        passages.append(Passage(f"compound:{c}", c, text))
        bridge = Hop(c, "discovered", d, f"{c} was discovered by {d}")
        contains = Hop(c, "contains", element, f"{c} contains {element}")
        questions += [
            Question(f"Who discovered {c}?", d, (bridge,)),
            Question(f"Which element does {c} contain?", element, (contains,)),
            Question(f"What is {c} used to make?", use, (Hop(c, "used", use, f"{c} is used to make {use}"),)),
            Question(f"Where was the discoverer of {c} born?", born[d], (bridge, birthplace_of[d])),
            Question(
                f"What is the favourite colour of the discoverer of {c}?",
                colour[d],
                (bridge, favourite_of[d]),
            ),
        ]  # fmt: skip
    return SearchWorld(tuple(passages), tuple(questions))


@functools.cache
def default_world() -> SearchWorld:
    """The world behind the corpus ``world`` and the task ``search``: 80 chemists, 160 compounds (240 passages,
    960 questions, 320 of them two-hop)."""
    return build_search_world()
