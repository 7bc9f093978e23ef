"""A synthetic shapes world: scenes, captions with one-word foils, scene graphs, and writers
for the FOIL, HAT and Visual Genome formats (``python -m tools.world --help``)."""

from tools.world.captions import Caption, Foil, Hallucination, Mention, holds
from tools.world.generate import Sample, make_sample, write_world
from tools.world.relations import PREDICATES, pair_predicates, scene_relations
from tools.world.scene import COLOURS, SHAPES, SIZES, Scene, Shape, render, sample_scene

__all__ = [
    "COLOURS",
    "PREDICATES",
    "SHAPES",
    "SIZES",
    "Caption",
    "Foil",
    "Hallucination",
    "Mention",
    "Sample",
    "Scene",
    "Shape",
    "holds",
    "make_sample",
    "pair_predicates",
    "render",
    "sample_scene",
    "scene_relations",
    "write_world",
]
