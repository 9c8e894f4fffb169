"""Synthetic Swiss-Judgment-Prediction-shaped cases for offline defaults and tests.

The cases follow the SJP schema and carry a learnable signal: each case states one
procedural finding whose wording predicts the outcome (with some label noise), so a
model fine-tuned on them can push its loss below the label entropy. Every case says it is
synthetic: its id starts with ``synthetic-``, its ``region`` is ``synthetic`` and it has
``"synthetic": true``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from training.formatting import build_prompt

LANGUAGES = ("de", "fr", "it")
LEGAL_AREAS = ("public law", "civil law", "penal law", "social law")
CANTONS = ("ZH", "BE", "VD", "GE", "TI", "LU", "SG", "BS")

# (text, label) findings per language: approval (1) or dismissal (0) cues.
FINDINGS: dict[str, list[tuple[str, int]]] = {
    "de": [
        ("Die Vorinstanz hat das rechtliche Gehör des Beschwerdeführers verletzt.", 1),
        ("Die Vorinstanz hat den Sachverhalt offensichtlich unrichtig festgestellt.", 1),
        ("Die Beschwerdefrist wurde nicht eingehalten.", 0),
        ("Die Rügen erschöpfen sich in appellatorischer Kritik.", 0),
    ],
    "fr": [
        ("L'autorité précédente a violé le droit d'être entendu du recourant.", 1),
        ("L'autorité précédente a établi les faits de manière manifestement inexacte.", 1),
        ("Le délai de recours n'a pas été respecté.", 0),
        ("Les griefs se limitent à une critique appellatoire.", 0),
    ],
    "it": [
        ("L'autorità inferiore ha violato il diritto di essere sentito del ricorrente.", 1),
        ("L'autorità inferiore ha accertato i fatti in modo manifestamente inesatto.", 1),
        ("Il termine di ricorso non è stato rispettato.", 0),
        ("Le censure si esauriscono in una critica appellatoria.", 0),
    ],
}
FILLER: dict[str, list[str]] = {
    "de": [
        "Der Beschwerdeführer wohnt im Kanton {canton}.",
        "Mit Verfügung vom {day}. März {year} wies das Amt das Gesuch ab.",
        "Das kantonale Gericht bestätigte den Entscheid.",
        "Er erhebt Beschwerde in öffentlich-rechtlichen Angelegenheiten.",
    ],
    "fr": [
        "Le recourant est domicilié dans le canton de {canton}.",
        "Par décision du {day} mars {year}, l'office a rejeté la demande.",
        "Le tribunal cantonal a confirmé cette décision.",
        "Il interjette un recours en matière de droit public.",
    ],
    "it": [
        "Il ricorrente è domiciliato nel Cantone {canton}.",
        "Con decisione del {day} marzo {year} l'ufficio ha respinto la domanda.",
        "Il tribunale cantonale ha confermato la decisione.",
        "Egli interpone ricorso in materia di diritto pubblico.",
    ],
}


def generate_cases(n: int, seed: int = 0, label_noise: float = 0.1) -> list[dict]:
    """``n`` synthetic SJP cases, the same for the same seed."""
    rng = random.Random(seed)
    cases = []
    for index in range(n):
        language = rng.choice(LANGUAGES)
        finding, label = rng.choice(FINDINGS[language])
        if rng.random() < label_noise:
            label = 1 - label
        year = rng.randint(2000, 2020)
        canton = rng.choice(CANTONS)
        filler = [
            sentence.format(canton=canton, day=rng.randint(1, 28), year=year - 1)
            for sentence in rng.sample(FILLER[language], k=rng.randint(2, 4))
        ]
        sentences = [*filler[:-1], finding, filler[-1]]
        cases.append(
            {
                "id": f"synthetic-{seed}-{index}",
                "year": year,
                "text": " ".join(sentences),
                "label": label,
                "language": language,
                "region": "synthetic",
                "canton": canton.lower(),
                "legal area": rng.choice(LEGAL_AREAS),
                "source_language": language,
                "synthetic": True,
            }
        )
    return cases


def training_corpus() -> Iterator[str]:
    """Fixed multilingual text the tiny tokenizer is trained on (chat markup included)."""
    for language in LANGUAGES:
        for sentence, _ in FINDINGS[language]:
            yield sentence
        for sentence in FILLER[language]:
            yield sentence
    for case in generate_cases(200, seed=12345):
        yield case["text"]
    yield build_prompt("", "de") + build_prompt("", "fr") + build_prompt("", "it")
    yield "approval dismissal Approval Dismissal Gutheissung Abweisung admission rejet"
    yield "accoglimento respinta ###A### ###B### ###C### ###D### Correct Answer:"
    yield "system user assistant <|im_start|> <|im_end|>"
