"""AudioSet vocabulary: class names, ontology descriptions and the texts that stand for each class."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..assets import resolve_asset


@dataclass(frozen=True)
class AudioSetClass:
    index: int
    mid: str
    name: str
    description: str
    parents: tuple[str, ...]  # display names of the ontology parents, nearest first


class AudioSetVocabulary:
    """The 527 classes in the tagger's output order, enriched from the ontology."""

    def __init__(self, labels_csv: Path, ontology_json: Path) -> None:
        with open(labels_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        nodes = {n["id"]: n for n in json.loads(Path(ontology_json).read_text(encoding="utf-8"))}
        parent_of: dict[str, list[str]] = {}
        for node in nodes.values():
            for child in node["child_ids"]:
                parent_of.setdefault(child, []).append(node["id"])
        self.classes = [
            AudioSetClass(
                index=int(r["index"]), mid=r["mid"], name=r["display_name"],
                description=nodes.get(r["mid"], {}).get("description", ""),
                parents=tuple(nodes[p]["name"] for p in parent_of.get(r["mid"], []) if p in nodes),
            )
            for r in rows
        ]
        if [c.index for c in self.classes] != list(range(len(self.classes))):
            raise ValueError(f"{labels_csv}: class indices must run 0..N-1 in order")

    @classmethod
    def default(cls) -> AudioSetVocabulary:
        return cls(resolve_asset("class_labels_indices.csv"), resolve_asset("ontology.json"))

    def __len__(self) -> int:
        return len(self.classes)

    @cached_property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def texts(self, style: str) -> list[list[str]]:
        """The phrases that stand for each class; `style` is an ablation knob (see BENCHMARKS.md).

        "aliases" splits compound names ("Cattle, bovinae") into separate phrases, so a query only has to
        match one of them; the other styles give one phrase per class.
        """
        out = []
        for c in self.classes:
            name = c.name
            parent = c.parents[0] if c.parents else ""
            if style == "aliases":
                out.append([a.strip() for a in name.split(",") if a.strip()] or [name])
            elif style == "name":
                out.append([name])
            elif style == "sound":
                out.append([f"the sound of {name.lower()}"])
            elif style == "parent":
                out.append([f"{name} ({parent})" if parent else name])
            elif style == "description":
                out.append([f"{name}. {first_sentence(c.description)}"])
            else:
                raise ValueError(f"unknown label text style {style!r}")
        return out

    def top_tags(self, probs: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable class names, best first."""
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.classes[i].name, round(float(probs[i]), 4)) for i in order]


def first_sentence(text: str) -> str:
    """Ontology descriptions ramble; the first sentence carries the meaning."""
    head, _, _ = text.partition(". ")
    return head.rstrip(".")
