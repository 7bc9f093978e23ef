"""Label names of the Visual Genome (VG150) split used by the paper.

Object classes are the 150 VG150 categories in category-id order (class index = category_id - 1);
predicates are the 50 VG150 predicates in ``rel_categories`` order without the background entry.
"""

from __future__ import annotations

VG150_OBJECTS: tuple[str, ...] = (
    "airplane", "animal", "arm", "bag", "banana", "basket", "beach", "bear", "bed", "bench",
    "bike", "bird", "board", "boat", "book", "boot", "bottle", "bowl", "box", "boy",
    "branch", "building", "bus", "cabinet", "cap", "car", "cat", "chair", "child", "clock",
    "coat", "counter", "cow", "cup", "curtain", "desk", "dog", "door", "drawer", "ear",
    "elephant", "engine", "eye", "face", "fence", "finger", "flag", "flower", "food", "fork",
    "fruit", "giraffe", "girl", "glass", "glove", "guy", "hair", "hand", "handle", "hat",
    "head", "helmet", "hill", "horse", "house", "jacket", "jean", "kid", "kite", "lady",
    "lamp", "laptop", "leaf", "leg", "letter", "light", "logo", "man", "men", "motorcycle",
    "mountain", "mouth", "neck", "nose", "number", "orange", "pant", "paper", "paw", "people",
    "person", "phone", "pillow", "pizza", "plane", "plant", "plate", "player", "pole", "post",
    "pot", "racket", "railing", "rock", "roof", "room", "screen", "seat", "sheep", "shelf",
    "shirt", "shoe", "short", "sidewalk", "sign", "sink", "skateboard", "ski", "skier", "sneaker",
    "snow", "sock", "stand", "street", "surfboard", "table", "tail", "tie", "tile", "tire",
    "toilet", "towel", "tower", "track", "train", "tree", "truck", "trunk", "umbrella", "vase",
    "vegetable", "vehicle", "wave", "wheel", "window", "windshield", "wing", "wire", "woman", "zebra",
)  # fmt: skip

VG150_PREDICATES: tuple[str, ...] = (
    "above", "across", "against", "along", "and", "at", "attached to", "behind",
    "belonging to", "between", "carrying", "covered in", "covering", "eating", "flying in",
    "for", "from", "growing on", "hanging from", "has", "holding", "in", "in front of",
    "laying on", "looking at", "lying on", "made of", "mounted on", "near", "of", "on",
    "on back of", "over", "painted on", "parked on", "part of", "playing", "riding", "says",
    "sitting on", "standing on", "to", "under", "using", "walking in", "walking on", "watching",
    "wearing", "wears", "with",
)  # fmt: skip

assert len(VG150_OBJECTS) == 150
assert len(set(VG150_OBJECTS)) == 150
assert len(VG150_PREDICATES) == 50
assert len(set(VG150_PREDICATES)) == 50
